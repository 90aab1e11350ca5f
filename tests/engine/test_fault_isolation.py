"""One request's fault never becomes another's: a run that raises fails only the request at fault, a prompt
whose K/V computation fails fails only that prompt's requests, a cold prompt version is read from the store off
the step thread, and a damaged file fails only the requests that need it. Everyone else gets PEFT's tokens."""

from __future__ import annotations

import threading

import pytest

from prompt_store.storage import PromptStorage
from server.config import StoreConfig
from server.engine.batch import MaterializationChunk
from server.engine.fault_injection import InjectedFault
from server.engine.request import FinishReason
from tests.support.engine import make_engine, request, run_to_completion, upload_folder
from tests.support.reference import base_greedy, peft_greedy

MAX_NEW = 6
MARKER = "FAULT-INJECT"
PROMPTS = ["The capital of France is", "Once upon a time", "1 2 3"]


@pytest.fixture(scope="module")
def adapters(tiny_llama_dir, adapter_factory):
    return {
        "pt": adapter_factory(tiny_llama_dir, "PROMPT_TUNING", num_virtual_tokens=5),
        "prefix": adapter_factory(tiny_llama_dir, "PREFIX_TUNING", num_virtual_tokens=6),
    }


@pytest.fixture(scope="module")
def expected(tiny_llama_dir, adapters):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ids = [tokenizer(text).input_ids for text in PROMPTS]
    tokens = {(None, i): base_greedy(tiny_llama_dir, ids[i], MAX_NEW) for i in range(len(PROMPTS))}
    for task, path in adapters.items():
        tokens |= {(task, i): peft_greedy(tiny_llama_dir, path, ids[i], MAX_NEW) for i in range(len(PROMPTS))}
    return ids, tokens


def _submit_everyone(engine, ids):
    """Base, prompt tuning and prefix tuning requests for every prompt: the bystanders."""
    handles = {}
    for task in (None, "pt", "prefix"):
        for i, prompt in enumerate(ids):
            handles[(task, i)] = engine.add_request(request(f"{task}-{i}", prompt, MAX_NEW, task=task))
    return handles


def _assert_bystanders_served(handles, expected_tokens):
    for key, handle in handles.items():
        tokens, _, last = handle.result(timeout=0)
        assert last.finish_reason is not FinishReason.ERROR, key
        assert tokens == expected_tokens[key], key


def _assert_idle(engine):
    assert not engine.has_work()
    assert engine.block_manager.num_free + engine.prompt_cache.num_blocks == engine.block_manager.num_blocks
    assert engine.registry.stats().num_pinned_versions == 0


def test_a_run_that_raises_fails_only_the_request_at_fault(tiny_llama_dir, adapters, expected):
    ids, expected_tokens = expected
    engine = make_engine(tiny_llama_dir, block_size=4, fault_injection=f"run:{MARKER}")
    for task, path in adapters.items():
        upload_folder(engine, task, path)
    marked_ids = engine.tokenizer(f"{MARKER} and then some").input_ids
    handles = _submit_everyone(engine, ids)
    culprits = [
        engine.add_request(request(f"bad-{task}", marked_ids, MAX_NEW, task=task)) for task in (None, "pt", "prefix")
    ]
    run_to_completion(engine)
    for handle in culprits:
        tokens, _, last = handle.result(timeout=0)
        assert (tokens, last.finish_reason) == ([], FinishReason.ERROR)
        assert "other requests were not affected" in last.error
    _assert_bystanders_served(handles, expected_tokens)
    assert engine.stats().num_step_failures >= 1
    _assert_idle(engine)


def test_a_failed_prompt_computation_fails_that_prompts_requests_and_is_recomputed_later(
    tiny_llama_dir, adapters, expected
):
    ids, expected_tokens = expected
    engine = make_engine(tiny_llama_dir, block_size=4)
    upload_folder(engine, "pt", adapters["pt"])
    real_run = engine.runner.run

    def run_failing_materializations(chunks):
        if any(isinstance(chunk, MaterializationChunk) for chunk in chunks):
            raise RuntimeError("a kernel bug on virtual tokens")
        return real_run(chunks)

    engine.runner.run = run_failing_materializations
    doomed = [engine.add_request(request(f"pt-{i}", prompt, MAX_NEW, task="pt")) for i, prompt in enumerate(ids)]
    base = {(None, i): engine.add_request(request(f"base-{i}", prompt, MAX_NEW)) for i, prompt in enumerate(ids)}
    run_to_completion(engine, max_steps=200)  # would not end if the prompt's waiting requests retried forever
    for handle in doomed:
        _, _, last = handle.result(timeout=0)
        assert last.finish_reason is FinishReason.ERROR and "soft prompt" in last.error
    _assert_bystanders_served(base, expected_tokens)
    _assert_idle(engine)

    engine.runner.run = real_run  # fixed: the prompt is computed again, from scratch, for a new request
    again = engine.add_request(request("pt-again", ids[0], MAX_NEW, task="pt"))
    run_to_completion(engine)
    assert again.result(timeout=0)[0] == expected_tokens[("pt", 0)]


def test_a_fault_outside_run_and_sample_is_raised_for_the_process_to_end(tiny_llama_dir):
    engine = make_engine(tiny_llama_dir, fault_injection=f"loop:{MARKER}")
    engine.add_request(request("bad", engine.tokenizer(MARKER).input_ids, MAX_NEW))
    with pytest.raises(InjectedFault):
        run_to_completion(engine)


class RecordingStorage(PromptStorage):
    """A real on-disk store that notes which thread reads each version."""

    def __init__(self, directory):
        super().__init__(directory)
        self.reader_threads: list[str] = []

    def read_version(self, task, record):
        self.reader_threads.append(threading.current_thread().name)
        return super().read_version(task, record)


def _cold_engine(tiny_llama_dir, tmp_path, adapters):
    """Every task uploaded to a store on disk, then pushed out of the host tier (it holds one version)."""
    storage = RecordingStorage(tmp_path / "store")
    engine = make_engine(
        tiny_llama_dir, StoreConfig(directory=tmp_path / "store", host_cache_tasks=1), storage, block_size=4
    )
    for task, path in adapters.items():
        upload_folder(engine, task, path)
    upload_folder(engine, "filler", adapters["pt"])  # the host tier now holds only this one
    return engine, storage


def test_cold_prompt_versions_are_read_off_the_step_thread(tiny_llama_dir, tmp_path, adapters, expected):
    ids, expected_tokens = expected
    engine, storage = _cold_engine(tiny_llama_dir, tmp_path, adapters)
    handles = _submit_everyone(engine, ids)
    run_to_completion(engine)
    _assert_bystanders_served(handles, expected_tokens)
    assert storage.reader_threads, "nothing was read from the store: the test tested nothing"
    assert all(name.startswith("promptswap-prompt-load") for name in storage.reader_threads), storage.reader_threads
    assert storage.reader_threads.count(threading.current_thread().name) == 0
    _assert_idle(engine)


def test_a_damaged_version_fails_its_requests_alone(tiny_llama_dir, tmp_path, adapters, expected):
    ids, expected_tokens = expected
    engine, _ = _cold_engine(tiny_llama_dir, tmp_path, adapters)
    version = engine.registry.get_task("prefix").active_version
    weights = tmp_path / "store" / "tasks" / "prefix" / f"v{version}" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01  # one bit of one value: same size, still a valid safetensors file, wrong checksum
    weights.write_bytes(bytes(data))
    doomed = [
        engine.add_request(request(f"prefix-{i}", prompt, MAX_NEW, task="prefix")) for i, prompt in enumerate(ids)
    ]
    bystanders = {}
    for task in (None, "pt"):
        for i, prompt in enumerate(ids):
            bystanders[(task, i)] = engine.add_request(request(f"{task}-{i}", prompt, MAX_NEW, task=task))
    run_to_completion(engine)
    for handle in doomed:
        tokens, _, last = handle.result(timeout=0)
        assert (tokens, last.finish_reason) == ([], FinishReason.ERROR)
        assert "'prefix'" in last.error and "could not be loaded" in last.error
    _assert_bystanders_served(bystanders, expected_tokens)
    assert engine.registry.stats().num_damaged_entries == 1
    assert engine.stats().num_step_failures == 0  # refused before any step could see it
    _assert_idle(engine)
