"""Every upload rule: the error type, a message naming the problem, and nothing stored or changed."""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import replace

import pytest
import safetensors.torch
import torch

from prompt_store.errors import InvalidPromptError, PromptTooLargeError
from prompt_store.peft_format import read_peft_files, read_peft_folder
from prompt_store.safetensors_reader import PICKLE_MESSAGE
from server.config import StoreConfig
from tests.support.adapters import torch_saved

LIMITS = StoreConfig(max_virtual_tokens=64, max_file_bytes=64 * 1024, max_config_bytes=4096)


def _config(adapter, **changes):
    config = adapter.config() | changes
    return json.dumps({k: v for k, v in config.items() if v is not _DROP}).encode()


_DROP = object()


def _tensors(adapter, **changes):
    tensors = adapter.tensors() | changes
    return safetensors.torch.save({k: v for k, v in tensors.items() if v is not _DROP})


def _with_header(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


# id -> (adapter name, build(adapter) -> (config_bytes, model_bytes), error type, words the message must contain)
CASES = {
    "config not json": (
        "llama/prompt_tuning_random",
        lambda a: (b"{not json", a.model_bytes),
        InvalidPromptError,
        ["adapter_config.json", "JSON"],
    ),
    "config not utf8": (
        "llama/prompt_tuning_random",
        lambda a: (b"\xff\xfe{}", a.model_bytes),
        InvalidPromptError,
        ["adapter_config.json"],
    ),
    "config nan constant": (
        "llama/prompt_tuning_random",
        lambda a: (b'{"x": NaN}', a.model_bytes),
        InvalidPromptError,
        ["NaN"],
    ),
    "config array": (
        "llama/prompt_tuning_random",
        lambda a: (b"[1, 2]", a.model_bytes),
        InvalidPromptError,
        ["JSON object", "list"],
    ),
    "task_type seq2seq": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, task_type="SEQ_2_SEQ_LM"), a.model_bytes),
        InvalidPromptError,
        ["task_type", "CAUSAL_LM", "SEQ_2_SEQ_LM"],
    ),
    "task_type missing": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, task_type=_DROP), a.model_bytes),
        InvalidPromptError,
        ["task_type", "null"],
    ),
    "peft_type lora": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, peft_type="LORA"), a.model_bytes),
        InvalidPromptError,
        ["peft_type", "LORA", "PREFIX_TUNING"],
    ),
    "peft_type list": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, peft_type=["PROMPT_TUNING"]), a.model_bytes),
        InvalidPromptError,
        ["peft_type"],
    ),
    "peft_type cpt": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, peft_type="CPT"), a.model_bytes),
        InvalidPromptError,
        ["CPT"],
    ),
    "num_virtual_tokens zero": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, num_virtual_tokens=0), a.model_bytes),
        InvalidPromptError,
        ["num_virtual_tokens", "0"],
    ),
    "num_virtual_tokens string": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, num_virtual_tokens="4"), a.model_bytes),
        InvalidPromptError,
        ["num_virtual_tokens", '"4"'],
    ),
    "num_virtual_tokens float": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, num_virtual_tokens=4.0), a.model_bytes),
        InvalidPromptError,
        ["num_virtual_tokens", "4.0"],
    ),
    "num_virtual_tokens bool": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, num_virtual_tokens=True), a.model_bytes),
        InvalidPromptError,
        ["num_virtual_tokens", "true"],
    ),
    "num_virtual_tokens over limit": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, num_virtual_tokens=65), a.model_bytes),
        PromptTooLargeError,
        ["num_virtual_tokens", "65", "64"],
    ),
    "num_virtual_tokens not rows": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, num_virtual_tokens=5), a.model_bytes),
        InvalidPromptError,
        ["prompt_embeddings", "[4, 64]", "[5, 64]"],
    ),
    "token_dim not hidden": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, token_dim=32), a.model_bytes),
        InvalidPromptError,
        ["token_dim", "32", "64", "hidden size"],
    ),
    "token_dim negative": (
        "llama/p_tuning_mlp",
        lambda a: (_config(a, token_dim=-1), a.model_bytes),
        InvalidPromptError,
        ["token_dim", "-1"],
    ),
    "submodules 2": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, num_transformer_submodules=2), a.model_bytes),
        InvalidPromptError,
        ["num_transformer_submodules", "2"],
    ),
    "modules_to_save": (
        "llama/prompt_tuning_random",
        lambda a: (_config(a, modules_to_save=["lm_head"]), a.model_bytes),
        InvalidPromptError,
        ["modules_to_save"],
    ),
    "prefix num_layers": (
        "llama/prefix",
        lambda a: (_config(a, num_layers=3), a.model_bytes),
        InvalidPromptError,
        ["num_layers", "3", "2"],
    ),
    "prefix query heads": (
        "llama/prefix",
        lambda a: (_config(a, num_attention_heads=4), a.model_bytes),
        InvalidPromptError,
        ["num_attention_heads", "4", "KV heads"],
    ),
    "prefix token_dim hidden": (
        "llama/prefix",
        lambda a: (_config(a, token_dim=64), a.model_bytes),
        InvalidPromptError,
        ["token_dim", "64", "32"],
    ),
    "prefix width": (
        "llama/prefix",
        lambda a: (a.config_bytes, _tensors(a, prompt_embeddings=torch.zeros(4, 64))),
        InvalidPromptError,
        ["prompt_embeddings", "[4, 64]", "[4, 128]"],
    ),
    "tensor missing": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, _tensors(a, prompt_embeddings=_DROP, other=torch.zeros(4, 64))),
        InvalidPromptError,
        ["no tensor", "prompt_embeddings"],
    ),
    "tensor prefixed name": (
        "llama/prompt_tuning_random",
        lambda a: (
            a.config_bytes,
            safetensors.torch.save({"base_model.prompt_embeddings": a.tensors()["prompt_embeddings"]}),
        ),
        InvalidPromptError,
        ["prompt_embeddings"],
    ),
    "tensor extra": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, _tensors(a, **{"lm_head.weight": torch.zeros(2, 2)})),
        InvalidPromptError,
        ["unexpected tensor", "lm_head.weight"],
    ),
    "tensor wrong hidden": (
        "llama/p_tuning_lstm",
        lambda a: (a.config_bytes, _tensors(a, prompt_embeddings=torch.zeros(4, 32))),
        InvalidPromptError,
        ["prompt_embeddings", "[4, 32]", "[4, 64]"],
    ),
    "tensor 3d": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, _tensors(a, prompt_embeddings=torch.zeros(1, 4, 64))),
        InvalidPromptError,
        ["prompt_embeddings", "[1, 4, 64]"],
    ),
    "dtype f64": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, _tensors(a, prompt_embeddings=torch.zeros(4, 64, dtype=torch.float64))),
        InvalidPromptError,
        ["F64"],
    ),
    "dtype i32": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, _tensors(a, prompt_embeddings=torch.zeros(4, 64, dtype=torch.int32))),
        InvalidPromptError,
        ["I32"],
    ),
    "dtype f8": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, _tensors(a, prompt_embeddings=torch.zeros(4, 64, dtype=torch.float8_e4m3fn))),
        InvalidPromptError,
        ["F8_E4M3"],
    ),
    "nan": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, _tensors(a, prompt_embeddings=torch.full((4, 64), float("nan")))),
        InvalidPromptError,
        ["prompt_embeddings", "NaN"],
    ),
    "inf": (
        "llama/prefix",
        lambda a: (a.config_bytes, _tensors(a, prompt_embeddings=torch.full((4, 128), float("inf")).half())),
        InvalidPromptError,
        ["prompt_embeddings", "infinite"],
    ),
    "multitask overflow": (
        "llama/multitask",
        lambda a: (
            a.config_bytes,
            _tensors(a, prefix_task_cols=torch.full((3, 4, 2), 1e30), prefix_task_rows=torch.full((3, 2, 64), 1e30)),
        ),
        InvalidPromptError,
        ["infinite"],
    ),
    "multitask rows missing": (
        "llama/multitask",
        lambda a: (a.config_bytes, _tensors(a, prefix_task_rows=_DROP)),
        InvalidPromptError,
        ["prefix_task_rows"],
    ),
    "multitask num_tasks": (
        "llama/multitask",
        lambda a: (_config(a, num_tasks=4), a.model_bytes),
        InvalidPromptError,
        ["prefix_task_cols", "[3, 4, 2]", "[4, 4, 2]"],
    ),
    "multitask ranks": (
        "llama/multitask",
        lambda a: (a.config_bytes, _tensors(a, prefix_task_rows=torch.zeros(3, 3, 64))),
        InvalidPromptError,
        ["prefix_task_rows", "[3, 3, 64]", "[3, 2, 64]"],
    ),
    "multitask expands too far": (
        "llama/multitask",
        lambda a: (
            _config(a, num_tasks=None, num_ranks=None),
            _tensors(a, prefix_task_cols=torch.zeros(200, 4, 1), prefix_task_rows=torch.zeros(200, 1, 64)),
        ),
        PromptTooLargeError,
        ["expands", "float32"],
    ),
    "config too big": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes + b" " * 4096, a.model_bytes),
        PromptTooLargeError,
        ["adapter_config.json", "4096"],
    ),
    "model too big": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, a.model_bytes + b"\0" * 65536),
        PromptTooLargeError,
        ["adapter_model.safetensors", "65536"],
    ),
    "pickle zip": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, torch_saved(a.tensors())),
        InvalidPromptError,
        [PICKLE_MESSAGE],
    ),
    "pickle legacy": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, torch_saved(a.tensors(), legacy=True)),
        InvalidPromptError,
        [PICKLE_MESSAGE],
    ),
    "pickle protocol 0": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, b"(dp0\nVa\np1\nI1\ns."),
        InvalidPromptError,
        [PICKLE_MESSAGE],
    ),
    "empty model": ("llama/prompt_tuning_random", lambda a: (a.config_bytes, b""), InvalidPromptError, ["too short"]),
    "header length absurd": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, struct.pack("<Q", 2**63) + a.model_bytes[8:]),
        InvalidPromptError,
        ["header", str(2**63)],
    ),
    "header beyond file": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, struct.pack("<Q", 5000) + b"{" + b" " * 100),
        InvalidPromptError,
        ["5000", "only 101 bytes follow"],
    ),
    "header over cap": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, struct.pack("<Q", 2 << 20) + b"{" + b" " * 100),
        InvalidPromptError,
        ["header", "1048576"],
    ),
    "header not json": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, struct.pack("<Q", 4) + b"{abc"),
        InvalidPromptError,
        ["not valid JSON"],
    ),
    "header duplicate key": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, _dup_header()),
        InvalidPromptError,
        ["duplicate key"],
    ),
    "truncated data": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, a.model_bytes[:-3]),
        InvalidPromptError,
        ["truncated"],
    ),
    "trailing bytes": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, a.model_bytes + b"junk"),
        InvalidPromptError,
        ["4 unexpected bytes"],
    ),
    "offsets overlap": (
        "llama/prompt_tuning_random",
        lambda a: (
            a.config_bytes,
            _with_header(
                {
                    "prompt_embeddings": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]},
                    "x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                },
                bytes(1024),
            ),
        ),
        InvalidPromptError,
        ["overlaps"],
    ),
    "offsets gap": (
        "llama/prompt_tuning_random",
        lambda a: (
            a.config_bytes,
            _with_header(
                {"prompt_embeddings": {"dtype": "F32", "shape": [4, 64], "data_offsets": [4, 1028]}}, bytes(1028)
            ),
        ),
        InvalidPromptError,
        ["gap"],
    ),
    "offsets vs shape": (
        "llama/prompt_tuning_random",
        lambda a: (
            a.config_bytes,
            _with_header(
                {"prompt_embeddings": {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1020]}}, bytes(1020)
            ),
        ),
        InvalidPromptError,
        ["1020 bytes", "1024"],
    ),
    "negative shape": (
        "llama/prompt_tuning_random",
        lambda a: (
            a.config_bytes,
            _with_header({"prompt_embeddings": {"dtype": "F32", "shape": [-4, 64], "data_offsets": [0, 0]}}),
        ),
        InvalidPromptError,
        ["shape"],
    ),
    "metadata not strings": (
        "llama/prompt_tuning_random",
        lambda a: (a.config_bytes, _with_header({"__metadata__": {"a": 1}})),
        InvalidPromptError,
        ["__metadata__"],
    ),
}


def _dup_header() -> bytes:
    entry = b'{"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}'
    raw = b'{"a": ' + entry + b', "a": ' + entry + b"}"
    return struct.pack("<Q", len(raw)) + raw + bytes(4)


def _tree_digest(directory) -> dict[str, str]:
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(directory.rglob("*"))
    }


@pytest.mark.parametrize("case", CASES)
def test_reader_refuses_with_a_message_naming_the_problem(adapters, case):
    adapter_name, build, error_type, words = CASES[case]
    adapter = adapters[adapter_name]
    config_bytes, model_bytes = build(adapter)
    with pytest.raises(error_type) as caught:
        read_peft_files(config_bytes, model_bytes, adapter.shape, LIMITS)
    for word in words:
        assert word in str(caught.value), (case, str(caught.value))


@pytest.mark.parametrize("case", CASES)
def test_rejected_upload_changes_nothing(adapters, make_registry, store_config, case):
    adapter_name, build, error_type, _ = CASES[case]
    adapter = adapters[adapter_name]
    registry = make_registry(replace(store_config, **_limit_fields(LIMITS)))
    registry.upload("keep", adapter.config_bytes, adapter.model_bytes)
    before = (_tree_digest(store_config.directory), registry.list_tasks(), registry.stats().uploads_accepted)
    config_bytes, model_bytes = build(adapter)
    for task in ("keep", "fresh"):
        with pytest.raises(error_type):
            registry.upload(task, config_bytes, model_bytes)
    assert (_tree_digest(store_config.directory), registry.list_tasks(), registry.stats().uploads_accepted) == before
    assert registry.stats().uploads_rejected == 2
    assert not registry.has_task("fresh")


def _limit_fields(limits: StoreConfig) -> dict:
    return {
        "max_virtual_tokens": limits.max_virtual_tokens,
        "max_file_bytes": limits.max_file_bytes,
        "max_config_bytes": limits.max_config_bytes,
    }


def test_gpt2_prefix_needs_all_heads(adapters):
    """GPT-2 has no GQA: its prefix is sized by all 4 heads, so it does not fit the Llama-GQA shape."""
    adapter = adapters["gpt2/prefix"]
    llama_shape = adapters["llama/prefix"].shape
    with pytest.raises(InvalidPromptError, match="token_dim is 64; expected 32"):
        read_peft_files(adapter.config_bytes, adapter.model_bytes, llama_shape, LIMITS)


def test_folder_with_only_pickled_weights_is_refused(adapters, tmp_path):
    adapter = adapters["llama/prompt_tuning_random"]
    (tmp_path / "adapter_config.json").write_bytes(adapter.config_bytes)
    (tmp_path / "adapter_model.bin").write_bytes(torch_saved(adapter.tensors()))
    with pytest.raises(InvalidPromptError, match="pickled files are refused"):
        read_peft_folder(tmp_path, adapter.shape, LIMITS)


def test_folder_with_oversized_file_is_refused_before_reading(adapters, tmp_path):
    adapter = adapters["llama/prompt_tuning_random"]
    (tmp_path / "adapter_config.json").write_bytes(adapter.config_bytes)
    (tmp_path / "adapter_model.safetensors").write_bytes(bytes(LIMITS.max_file_bytes + 1))
    with pytest.raises(PromptTooLargeError, match="adapter_model.safetensors"):
        read_peft_folder(tmp_path, adapter.shape, LIMITS)


def test_missing_folder_is_an_invalid_prompt(adapters, tmp_path):
    with pytest.raises(InvalidPromptError, match="adapter_config.json could not be read"):
        read_peft_folder(tmp_path / "nope", adapters["llama/prefix"].shape, LIMITS)


def test_optional_fields_may_be_null(adapters):
    """Hand-written configs may leave out what PEFT fills in; the tensor shapes still decide."""
    adapter = adapters["llama/prefix"]
    config = _config(
        adapter, token_dim=None, num_layers=None, num_attention_heads=None, num_transformer_submodules=None
    )
    spec = read_peft_files(config, adapter.model_bytes, adapter.shape, LIMITS)
    assert tuple(spec.tensor.shape) == (1, 2, 2, 4, 2, 16)


# ---- finite in the serving dtype ---------------------------------------------------------------------------------
EMBEDDINGS = "prompt_embeddings"


@pytest.mark.parametrize(
    "adapter_name, serving_dtype, changes, tensor_name",
    [
        ("llama/prompt_tuning_random", torch.float16, {"prompt_embeddings": torch.full((4, 64), 1e5)}, EMBEDDINGS),
        ("llama/prefix", torch.float16, {"prompt_embeddings": torch.full((4, 128), -7e4)}, EMBEDDINGS),
        ("llama/prompt_tuning_random", torch.bfloat16, {"prompt_embeddings": torch.full((4, 64), 3.4e38)}, EMBEDDINGS),
        (
            "llama/multitask",
            torch.float16,
            {"prefix_task_cols": torch.full((3, 4, 2), 300.0), "prefix_task_rows": torch.full((3, 2, 64), 300.0)},
            "prefix_task_cols @ prefix_task_rows",
        ),
    ],
)
def test_values_that_overflow_the_serving_dtype_are_refused_naming_the_tensor(
    adapters, make_registry, store_config, adapter_name, serving_dtype, changes, tensor_name
):
    adapter = adapters[adapter_name]
    model_bytes = _tensors(adapter, **changes)
    read_peft_files(adapter.config_bytes, model_bytes, adapter.shape, LIMITS)  # fine in float32
    dtype_name = str(serving_dtype).removeprefix("torch.")
    shape = replace(adapter.shape, serving_dtype=dtype_name)
    named = rf"tensor '[^']*{re.escape(tensor_name)}[^']*' .* overflow {dtype_name}"
    with pytest.raises(InvalidPromptError, match=named):
        read_peft_files(adapter.config_bytes, model_bytes, shape, LIMITS)
    registry = make_registry(shape=shape)
    with pytest.raises(InvalidPromptError, match="overflow"):
        registry.upload("big", adapter.config_bytes, model_bytes)
    assert not registry.has_task("big")


def test_values_that_fit_the_serving_dtype_are_served_as_uploaded(adapters):
    adapter = adapters["llama/prompt_tuning_random"]
    model_bytes = _tensors(adapter, prompt_embeddings=torch.full((4, 64), 6.5e4))  # float16's largest is 65504
    shape = replace(adapter.shape, serving_dtype="float16")
    spec = read_peft_files(adapter.config_bytes, model_bytes, shape, LIMITS)
    assert spec.tensor.dtype == torch.float32 and float(spec.tensor.max()) == 6.5e4
