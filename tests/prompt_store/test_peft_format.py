"""read_peft_files gives exactly what PEFT computes at inference, for every served type, on Llama-GQA and GPT-2."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from transformers import DynamicCache

from prompt_store.peft_format import read_peft_files, read_peft_folder
from prompt_store.spec import PromptKind
from server.config import StoreConfig
from tests.support.adapters import NUM_SUBTASKS, NUM_VIRTUAL_TOKENS, peft_configs
from tests.support.tiny_models import TINY_MODELS, TINY_SHAPES

LIMITS = StoreConfig()
# transformers 5.23 deprecates an attribute PEFT 0.21.2 still reads when loading; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")
ALL_ADAPTERS = [f"{model}/{kind}" for model in TINY_MODELS for kind in peft_configs(None)]
EMBEDDING_ADAPTERS = [name for name in ALL_ADAPTERS if "prefix" not in name and "multitask" not in name]
PREFIX_ADAPTERS = [name for name in ALL_ADAPTERS if "prefix" in name]
MULTITASK_ADAPTERS = [name for name in ALL_ADAPTERS if "multitask" in name]


def _read(adapter):
    return read_peft_files(adapter.config_bytes, adapter.model_bytes, adapter.shape, LIMITS)


def _prefix_cache_from_spec(spec) -> DynamicCache:
    cache = DynamicCache()
    for layer in range(spec.tensor.shape[1]):
        keys, values = (spec.tensor[0, layer, slot].permute(1, 0, 2).unsqueeze(0) for slot in (0, 1))  # [1, H, p, D]
        cache.update(keys, values, layer)
    return cache


@pytest.mark.parametrize("name", ALL_ADAPTERS)
def test_spec_is_normalized(adapters, name):
    adapter = adapters[name]
    spec = _read(adapter)
    shape = adapter.shape
    assert spec.tensor.dtype == torch.float32 and spec.tensor.device.type == "cpu" and spec.tensor.is_contiguous()
    assert spec.peft_type == adapter.config()["peft_type"]
    assert spec.num_virtual_tokens == NUM_VIRTUAL_TOKENS
    if "prefix" in name:
        assert spec.kind is PromptKind.PREFIX_KV
        expected = (1, shape.num_layers, 2, NUM_VIRTUAL_TOKENS, shape.num_kv_heads, shape.head_dim)
    else:
        assert spec.kind is PromptKind.EMBEDDING
        expected = (NUM_SUBTASKS if "multitask" in name else 1, NUM_VIRTUAL_TOKENS, shape.hidden_size)
    assert tuple(spec.tensor.shape) == expected


@pytest.mark.parametrize("name", EMBEDDING_ADAPTERS)
def test_embedding_rows_equal_peft_prompt(adapters, name):
    adapter = adapters[name]
    spec = _read(adapter)
    with torch.no_grad():
        served = adapter.load_with_peft().get_prompt(batch_size=1)  # [1, p, hidden]
        trained = adapter.trained.get_prompt(batch_size=1)  # P-tuning: the encoder run on the trained weights
    assert torch.equal(spec.tensor, served)
    torch.testing.assert_close(spec.tensor, trained, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", PREFIX_ADAPTERS)
def test_prefix_layers_equal_peft_cache(adapters, name):
    adapter = adapters[name]
    spec = _read(adapter)
    with torch.no_grad():
        caches = {"served": adapter.load_with_peft().get_prompt(1), "trained": adapter.trained.get_prompt(1)}
    for cache in caches.values():
        assert len(cache.layers) == adapter.shape.num_layers
        for layer, cached in enumerate(cache.layers):
            # PEFT's cache holds [batch, KV heads, p, head_dim]; the spec holds [p, KV heads, head_dim]
            torch.testing.assert_close(spec.tensor[0, layer, 0], cached.keys[0].permute(1, 0, 2), rtol=0, atol=1e-6)
            torch.testing.assert_close(spec.tensor[0, layer, 1], cached.values[0].permute(1, 0, 2), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", MULTITASK_ADAPTERS)
def test_multitask_variants_equal_peft_prompt_per_subtask(adapters, name):
    adapter = adapters[name]
    spec = _read(adapter)
    served = adapter.load_with_peft()
    with torch.no_grad():
        for subtask in range(NUM_SUBTASKS):
            expected = served.get_prompt(batch_size=1, task_ids=torch.tensor([subtask]))
            assert torch.equal(spec.tensor[subtask : subtask + 1], expected), subtask
    assert not torch.equal(spec.tensor[0], spec.tensor[1])  # sub-tasks really differ


@pytest.mark.parametrize("name", EMBEDDING_ADAPTERS + MULTITASK_ADAPTERS)
def test_embedding_rows_prepended_reproduce_peft_logits(adapters, name):
    """The spec's meaning, not just its values: rows before the input embeddings give PEFT's logits."""
    adapter = adapters[name]
    spec = _read(adapter)
    input_ids = torch.tensor([[5, 17, 42, 9, 3]])
    peft_model = adapter.load_with_peft()
    base = TINY_MODELS[adapter.model_name]()
    subtask = NUM_SUBTASKS - 1 if adapter.is_multitask else 0
    extra = {"task_ids": torch.tensor([subtask])} if adapter.is_multitask else {}
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids, **extra).logits
        embeds = torch.cat([spec.tensor[subtask : subtask + 1], base.get_input_embeddings()(input_ids)], dim=1)
        actual = base(inputs_embeds=embeds).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", PREFIX_ADAPTERS)
def test_prefix_cache_reproduces_peft_logits(adapters, name):
    """Keys and values land in the right layer and slot: a cache built from the spec gives PEFT's logits."""
    adapter = adapters[name]
    spec = _read(adapter)
    input_ids = torch.tensor([[5, 17, 42, 9, 3]])
    peft_model = adapter.load_with_peft()
    base = TINY_MODELS[adapter.model_name]()
    mask = torch.ones(1, NUM_VIRTUAL_TOKENS + input_ids.shape[1], dtype=torch.long)
    with torch.no_grad():
        expected = peft_model(input_ids=input_ids).logits
        actual = base(input_ids=input_ids, past_key_values=_prefix_cache_from_spec(spec), attention_mask=mask).logits
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", ["prompt_tuning_random", "prefix", "multitask"])
def test_half_precision_files_widen_like_peft(adapters, tmp_path, kind, dtype):
    adapter = adapters[f"llama/{kind}"]
    halved = {name: tensor.to(dtype) for name, tensor in adapter.tensors().items()}
    (tmp_path / "adapter_config.json").write_bytes(adapter.config_bytes)
    safetensors.torch.save_file(halved, tmp_path / "adapter_model.safetensors")
    spec = read_peft_folder(tmp_path, adapter.shape, LIMITS)
    reference = type(adapter)(adapter.name, adapter.model_name, tmp_path, b"", b"", adapter.trained).load_with_peft()
    with torch.no_grad():
        if kind == "prefix":
            layer0 = reference.get_prompt(1).layers[0]
            assert torch.equal(spec.tensor[0, 0, 0], layer0.keys[0].permute(1, 0, 2))
        elif kind == "multitask":
            assert torch.equal(spec.tensor[1:2], reference.get_prompt(1, task_ids=torch.tensor([1])))
        else:
            assert torch.equal(spec.tensor, reference.get_prompt(1))
    assert spec.tensor.dtype == torch.float32


def test_read_folder_equals_read_files(adapters):
    adapter = adapters["gpt2/prefix_projection"]
    assert torch.equal(read_peft_folder(adapter.folder, TINY_SHAPES["gpt2"], LIMITS).tensor, _read(adapter).tensor)


def test_saved_keys_are_unprefixed(adapters):
    """PEFT 0.21 saves prompt-learning weights under bare names; the reader relies on it."""
    assert set(adapters["llama/prefix"].tensors()) == {"prompt_embeddings"}
    assert set(adapters["llama/multitask"].tensors()) == {"prompt_embeddings", "prefix_task_cols", "prefix_task_rows"}
    assert adapters["llama/prefix"].config()["num_attention_heads"] == 2  # GQA: the KV head count
    assert adapters["llama/prefix"].config()["num_transformer_submodules"] == 1
