"""Uploads, activations, deletes and request pins from many threads at once: the invariants still hold."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from dataclasses import replace

import torch

from prompt_store.errors import UnknownTaskError
from prompt_store.peft_format import read_peft_files
from server.config import StoreConfig

TASKS = ["t0", "t1", "t2", "t3"]
UPLOADS_PER_THREAD = 8


def test_concurrent_registry_use(make_registry, store_config, adapters, second_adapters):
    registry = make_registry(replace(store_config, host_cache_tasks=3, versions_kept=1))
    pool = [
        adapters[name]
        for name in ("llama/prompt_tuning_random", "llama/prefix", "llama/multitask", "llama/p_tuning_mlp")
    ]
    pool += list(second_adapters.values())
    expected = [read_peft_files(a.config_bytes, a.model_bytes, a.shape, StoreConfig()).tensor for a in pool]
    uploaded: dict[tuple[str, int], int] = {}  # (task, version) -> pool index
    served: list[tuple[tuple[str, int], torch.Tensor]] = []
    errors: list[BaseException] = []
    record_lock = threading.Lock()
    uploads_done = threading.Event()

    def guarded(body):
        def run():
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - surfaced by the assertion below
                errors.append(exc)

        return threading.Thread(target=run)

    def uploader(seed):
        rng = random.Random(seed)
        for _ in range(UPLOADS_PER_THREAD):
            index = rng.randrange(len(pool))
            result = registry.upload(rng.choice(TASKS), pool[index].config_bytes, pool[index].model_bytes)
            with record_lock:
                assert (result.task, result.version) not in uploaded, "a version number was reused"
                uploaded[(result.task, result.version)] = index

    def reader(seed):
        rng = random.Random(seed)
        while not uploads_done.is_set():
            try:
                ref = registry.pin(rng.choice(TASKS))
            except UnknownTaskError:
                continue  # not uploaded yet, or just deleted
            first = registry.spec(ref)
            assert first.kind is ref.kind and first.num_variants == ref.num_variants
            assert first.num_virtual_tokens == ref.num_virtual_tokens
            assert torch.equal(registry.spec(ref).tensor, first.tensor)  # a request sees one version throughout
            time.sleep(0.0005)  # hold the pin a moment, as a request would, while others change the task
            registry.unpin(ref)
            with record_lock:
                served.append((ref.key, first.tensor))

    def deleter():
        rng = random.Random(99)
        while not uploads_done.is_set():
            with contextlib.suppress(UnknownTaskError):
                registry.delete("t3")
            try:
                info = registry.get_task(rng.choice(TASKS))
                registry.activate(info.task, rng.choice(info.versions).version)
            except UnknownTaskError:
                pass  # deleted or pruned meanwhile

    uploaders = [guarded(lambda s=seed: uploader(s)) for seed in range(3)]
    others = [guarded(lambda s=seed: reader(s)) for seed in range(10, 14)] + [guarded(deleter)]
    for thread in uploaders + others:
        thread.start()
    for thread in uploaders:
        thread.join()
    uploads_done.set()
    for thread in others:
        thread.join()

    assert errors == []
    assert len(uploaded) == 3 * UPLOADS_PER_THREAD
    assert len(served) > 20
    for key, tensor in served:
        assert torch.equal(tensor, expected[uploaded[key]]), key
    stats = registry.stats()
    assert stats.num_pinned_versions == 0 and stats.num_host_cached <= 3
    assert stats.uploads_accepted == 3 * UPLOADS_PER_THREAD
    restarted = make_registry()
    assert restarted.list_tasks() == registry.list_tasks()
    for task in TASKS:  # versions pinned during an upload outlive its prune; the next upload drops them
        registry.upload(task, pool[0].config_bytes, pool[0].model_bytes)
        assert len(registry.get_task(task).versions) <= 2  # the active one + versions_kept
