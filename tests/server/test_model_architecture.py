"""What start-up reads from a model's architecture: the shape of its K/V, Gemma 3's embedding scale, sliding
windows; and what it refuses, by name, before anything is served."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, Qwen2Config, Qwen2ForCausalLM

from server.engine import attention
from server.engine.request import FinishReason
from server.model import ModelLoadError, load_model
from server.model.architecture import served_architecture
from tests.support.engine import make_engine, request, run_to_completion
from tests.support.tiny_architectures import ARCHITECTURES, SLIDING_WINDOW, build_tiny_gemma2

CPU = torch.device("cpu")
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
# model_type -> (KV heads, head_dim, sliding window the engine caps to, embedding scale)
EXPECTED = {
    "qwen2": (2, 16, None, None),
    "qwen3": (2, 24, None, None),
    "mistral": (2, 16, SLIDING_WINDOW, None),
    "gemma3_text": (2, 32, SLIDING_WINDOW, 8.0),  # sqrt(hidden 64)
    "phi3": (2, 16, None, None),
    "gpt_neox": (4, 16, None, None),
}


@pytest.fixture(scope="module")
def built(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: build(smollm2_dir, tmp_path_factory.mktemp(name)) for name, build in ARCHITECTURES.items()}


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_shape_window_and_embedding_scale_of_each_architecture(built, model_type):
    loaded = load_model(str(built[model_type]), Path("/nonexistent-cache"), CPU, torch.float32)
    num_kv_heads, head_dim, window, scale = EXPECTED[model_type]
    assert (loaded.shape.num_kv_heads, loaded.shape.head_dim) == (num_kv_heads, head_dim)
    architecture = served_architecture(loaded.model)
    assert architecture.model_type == model_type
    assert (architecture.attention_window, architecture.embedding_scale) == (window, scale)


def test_max_model_len_is_capped_to_the_sliding_window(built, caplog):
    with caplog.at_level(logging.INFO, logger="promptswap.engine"):
        engine = make_engine(built["mistral"], block_size=4, num_kv_blocks=128, max_model_len=4096)
    assert engine.max_model_len == SLIDING_WINDOW
    assert f"capped from 256 to {SLIDING_WINDOW} tokens" in caplog.text and "sliding window" in caplog.text
    handle = engine.add_request(request("r", [1, 2, 3], 1000, ignore_eos=True))
    run_to_completion(engine)
    tokens, _, last = handle.result(timeout=5)
    assert 3 + len(tokens) == SLIDING_WINDOW and last.finish_reason == FinishReason.LENGTH  # never past the window


def test_gemma2_attention_softcapping_is_refused_at_load(smollm2_dir: Path, tmp_path: Path):
    with pytest.raises(ModelLoadError, match=r"gemma2 .*attention logit soft-capping \(attn_logit_softcapping=50"):
        load_model(str(build_tiny_gemma2(smollm2_dir, tmp_path)), tmp_path, CPU, torch.float32)


def _gemma3(**options) -> Gemma3ForCausalLM:
    return Gemma3ForCausalLM(Gemma3TextConfig(**TINY, head_dim=16, vocab_size=64, **options)).eval()


def test_bidirectional_attention_is_refused():
    with pytest.raises(ModelLoadError, match="bidirectional attention"):
        served_architecture(_gemma3(use_bidirectional_attention=True))


def test_layers_that_are_not_plain_attention_are_refused():
    model = Qwen2ForCausalLM(Qwen2Config(**TINY, vocab_size=64)).eval()
    model.config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(ModelLoadError, match=r"layer types \['linear_attention'\]"):
        served_architecture(model)


class ShiftedEmbedding(torch.nn.Embedding):
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) + 1.0


def test_an_embedding_module_that_does_more_than_look_up_rows_is_refused():
    model = Qwen2ForCausalLM(Qwen2Config(**TINY, vocab_size=64)).eval()
    model.set_input_embeddings(ShiftedEmbedding(64, 64))
    with pytest.raises(ModelLoadError, match="ShiftedEmbedding does more than look up rows"):
        served_architecture(model)


def test_a_layer_asking_for_soft_capping_at_run_time_is_not_served():
    q = k = v = torch.zeros(1, 2, 1, 16)
    step = object()  # never read: the check comes first
    with pytest.raises(NotImplementedError, match="softcap"):
        attention.paged_attention_forward(None, q, k, v, None, 1.0, softcap=50.0, **{attention.STEP_KWARG: step})


def test_a_window_counts_only_when_some_layer_slides():
    options = dict(TINY, vocab_size=64, sliding_window=32, max_window_layers=1)
    assert served_architecture(Qwen2ForCausalLM(Qwen2Config(**options, use_sliding_window=True))).attention_window == 32
    global_only = _gemma3(sliding_window=32, layer_types=["full_attention", "full_attention"])
    assert served_architecture(global_only).attention_window is None  # Gemma keeps sliding_window set regardless
