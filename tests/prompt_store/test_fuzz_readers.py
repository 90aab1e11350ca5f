"""Whatever bytes arrive, the readers raise only typed PromptStoreError subclasses (or return a valid spec)."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prompt_store.errors import InvalidPromptError, PromptStoreError
from prompt_store.peft_format import read_peft_files
from prompt_store.safetensors_reader import PICKLE_MESSAGE, read_safetensors
from prompt_store.spec import PromptSpec
from server.config import StoreConfig
from tests.support.adapters import torch_saved
from tests.support.tiny_models import TINY_SHAPES

LIMITS = StoreConfig(max_virtual_tokens=64, max_file_bytes=1 << 20, max_config_bytes=1 << 14)
SHAPE = TINY_SHAPES["llama"]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ADAPTER_NAMES = ["llama/prompt_tuning_random", "llama/prefix", "llama/multitask"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
config_fields = st.sampled_from(
    [
        "peft_type",
        "task_type",
        "num_virtual_tokens",
        "token_dim",
        "num_layers",
        "num_attention_heads",
        "num_transformer_submodules",
        "num_tasks",
        "num_ranks",
        "modules_to_save",
    ]
)
torch_dtypes = st.sampled_from(
    [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int8,
        torch.int32,
        torch.int64,
        torch.uint8,
        torch.bool,
        torch.float8_e4m3fn,
    ]
)
tensor_names = st.sampled_from(["prompt_embeddings", "prefix_task_cols", "prefix_task_rows", "x", ""])
shapes = st.lists(st.integers(0, 9), min_size=0, max_size=4)


def _read_expecting_only_typed_errors(config_bytes: bytes, model_bytes: bytes) -> PromptSpec | None:
    try:
        spec = read_peft_files(config_bytes, model_bytes, SHAPE, LIMITS)
    except PromptStoreError as exc:
        assert str(exc)  # every refusal says why
        return None
    assert spec.tensor.dtype == torch.float32 and bool(torch.isfinite(spec.tensor).all())
    return spec


@FUZZ
@given(data=st.binary(max_size=2048))
def test_random_bytes(adapters, data):
    adapter = adapters["llama/prompt_tuning_random"]
    _read_expecting_only_typed_errors(adapter.config_bytes, data)
    _read_expecting_only_typed_errors(data, adapter.model_bytes)


@FUZZ
@given(name=st.sampled_from(ADAPTER_NAMES), cut=st.integers(0, 10_000))
def test_truncated_files(adapters, name, cut):
    adapter = adapters[name]
    _read_expecting_only_typed_errors(adapter.config_bytes, adapter.model_bytes[: cut % len(adapter.model_bytes)])
    _read_expecting_only_typed_errors(adapter.config_bytes[: cut % len(adapter.config_bytes)], adapter.model_bytes)


@FUZZ
@given(
    name=st.sampled_from(ADAPTER_NAMES),
    flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_corrupted_bytes(adapters, name, flips):
    adapter = adapters[name]
    model = bytearray(adapter.model_bytes)
    for position, value in flips:
        model[position % len(model)] = value
    _read_expecting_only_typed_errors(adapter.config_bytes, bytes(model))


@FUZZ
@given(name=st.sampled_from(ADAPTER_NAMES), header_length=st.integers(0, 2**64 - 1))
def test_absurd_header_lengths(adapters, name, header_length):
    adapter = adapters[name]
    model = struct.pack("<Q", header_length) + adapter.model_bytes[8:]
    _read_expecting_only_typed_errors(adapter.config_bytes, model)


@FUZZ
@given(
    name=st.sampled_from(ADAPTER_NAMES),
    header=st.dictionaries(st.text(max_size=20), json_values, max_size=4),
    padding=st.binary(max_size=64),
)
def test_random_headers(adapters, name, header, padding):
    raw = json.dumps(header).encode()
    _read_expecting_only_typed_errors(adapters[name].config_bytes, struct.pack("<Q", len(raw)) + raw + padding)


@FUZZ
@given(
    name=st.sampled_from(ADAPTER_NAMES),
    entries=st.dictionaries(tensor_names, st.tuples(torch_dtypes, shapes), min_size=0, max_size=3),
    poison=st.sampled_from([None, float("nan"), float("inf"), -float("inf"), 1e38]),
)
def test_wrong_dtypes_shapes_names_and_values(adapters, name, entries, poison):
    tensors = {}
    for tensor_name, (dtype, shape) in entries.items():
        tensor = torch.randn(shape).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
        if poison is not None and tensor.numel() and dtype.is_floating_point:
            tensor.view(-1)[0] = poison
        tensors[tensor_name] = tensor
    _read_expecting_only_typed_errors(adapters[name].config_bytes, safetensors.torch.save(tensors))


@FUZZ
@given(name=st.sampled_from(ADAPTER_NAMES), field=config_fields, value=json_values)
def test_config_fields_with_random_values(adapters, name, field, value):
    adapter = adapters[name]
    config = adapter.config() | {field: value}
    spec = _read_expecting_only_typed_errors(json.dumps(config).encode(), adapter.model_bytes)
    if spec is not None:
        assert spec.num_virtual_tokens == 4


@FUZZ
@given(config=json_values)
def test_random_json_configs(adapters, config):
    _read_expecting_only_typed_errors(json.dumps(config).encode(), adapters["llama/prefix"].model_bytes)


def test_deeply_nested_json_is_refused(adapters):
    deep = b"[" * 10_000 + b"]" * 10_000
    with pytest.raises(InvalidPromptError):
        read_peft_files(deep, adapters["llama/prefix"].model_bytes, SHAPE, LIMITS)
    header = b'{"a":' + deep + b"}"
    with pytest.raises(InvalidPromptError):
        read_safetensors(struct.pack("<Q", len(header)) + header)


@pytest.mark.parametrize("legacy", [False, True])
def test_renamed_pickle_is_named_as_such(adapters, legacy):
    data = torch_saved(adapters["llama/prefix"].tensors(), legacy=legacy)
    with pytest.raises(InvalidPromptError, match=PICKLE_MESSAGE):
        read_safetensors(data)


def test_valid_header_that_starts_like_a_pickle_is_not_refused():
    """A 640-byte header's length field begins 0x80 0x02, the pickle protocol-2 magic; it must still load."""
    name = "t" * 575
    header = json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    header += b" " * (640 - len(header))
    data = struct.pack("<Q", 640) + header + bytes(4)
    assert data[:2] == b"\x80\x02"
    assert list(read_safetensors(data)) == [name]


header_entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "BF16", "F64", "I8", "XYZ"]),
        "shape": st.lists(st.integers(-2, 300), max_size=3),
        "data_offsets": st.lists(st.integers(-5, 2100), min_size=0, max_size=3),
    }
)


@FUZZ
@given(
    name=st.sampled_from(ADAPTER_NAMES),
    entries=st.dictionaries(tensor_names, header_entries, max_size=3),
    data=st.binary(max_size=2100),
)
def test_structured_headers_with_random_offsets(adapters, name, entries, data):
    raw = json.dumps(entries).encode()
    _read_expecting_only_typed_errors(adapters[name].config_bytes, struct.pack("<Q", len(raw)) + raw + data)


def test_metadata_and_empty_tensors_are_accepted():
    data = safetensors.torch.save({"a": torch.zeros(0, 3), "b": torch.ones(2)}, metadata={"format": "pt"})
    tensors = read_safetensors(data)
    assert tensors["a"].shape == (0, 3) and torch.equal(tensors["b"], torch.ones(2))
