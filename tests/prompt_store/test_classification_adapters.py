"""Classification adapters (SEQ_CLS, TOKEN_CLS): saved by PEFT from tiny Llama and GPT-2 classifiers, read into a
PromptSpec with its ClassifierHead, refused with a message naming the flaw, and kept through the registry's store."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import safetensors.torch
import torch
from peft import (
    MultitaskPromptTuningConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)

from prompt_store.classifier_head import MAX_NUM_LABELS
from prompt_store.errors import InvalidPromptError, PromptTooLargeError
from prompt_store.labels import with_labels
from prompt_store.model_shape import ModelShape
from prompt_store.peft_format import read_peft_files
from prompt_store.spec import TaskKind
from server.config import StoreConfig
from tests.support.classifiers import MODEL_CLASSES
from tests.support.tiny_models import TINY_SHAPES, random_gpt2, random_llama

LIMITS = StoreConfig(max_virtual_tokens=64, max_file_bytes=1 << 20, max_config_bytes=1 << 14)
NUM_LABELS = 3
NUM_SUBTASKS = 2
CAUSAL_BASES = {"llama": random_llama, "gpt2": random_gpt2}
TASK_KINDS = {"SEQ_CLS": TaskKind.CLASSIFY_SEQUENCE, "TOKEN_CLS": TaskKind.CLASSIFY_TOKENS}


def _prompt_configs(task_type: str) -> dict[str, Callable[[], PeftConfig]]:
    common = {"task_type": task_type, "num_virtual_tokens": 4}
    return {
        "prompt_tuning": lambda: PromptTuningConfig(**common),
        "p_tuning": lambda: PromptEncoderConfig(**common, encoder_hidden_size=32),
        "prefix": lambda: PrefixTuningConfig(**common),
        "prefix_projection": lambda: PrefixTuningConfig(**common, prefix_projection=True, encoder_hidden_size=32),
        "multitask": lambda: MultitaskPromptTuningConfig(**common, num_tasks=NUM_SUBTASKS, num_ranks=2),
    }


@dataclass
class Classifier:
    name: str  # "<model>/<task_type>/<prompt kind>"
    model_name: str
    task_type: str
    config_bytes: bytes
    model_bytes: bytes

    @property
    def shape(self) -> ModelShape:
        return TINY_SHAPES[self.model_name]

    def config(self) -> dict:
        return json.loads(self.config_bytes)

    def tensors(self) -> dict[str, torch.Tensor]:
        return safetensors.torch.load(self.model_bytes)

    def head_names(self) -> list[str]:
        return sorted(name for name in self.tensors() if name.startswith("base_model."))


def _make_classifier(model_name: str, task_type: str, kind: str, make_config, folder: Path) -> Classifier:
    torch.manual_seed(0)
    config = CAUSAL_BASES[model_name](TINY_SHAPES[model_name]).config
    config.num_labels = NUM_LABELS
    peft_model = get_peft_model(MODEL_CLASSES[task_type].from_config(config), make_config())
    with (
        torch.no_grad()
    ):  # every trainable value (prompt, encoder, head copy) off its init, so a reader that drops one shows
        for param in peft_model.parameters():
            if param.requires_grad:
                param.normal_(std=0.5)
    peft_model.save_pretrained(folder)
    return Classifier(
        name=f"{model_name}/{task_type}/{kind}",
        model_name=model_name,
        task_type=task_type,
        config_bytes=(folder / "adapter_config.json").read_bytes(),
        model_bytes=(folder / "adapter_model.safetensors").read_bytes(),
    )


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory) -> dict[str, Classifier]:
    root = tmp_path_factory.mktemp("classifiers")
    saved = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for model_name in CAUSAL_BASES:
            for task_type in MODEL_CLASSES:
                for kind, make_config in _prompt_configs(task_type).items():
                    classifier = _make_classifier(
                        model_name, task_type, kind, make_config, root / model_name / task_type / kind
                    )
                    saved[classifier.name] = classifier
    return saved


ALL_NAMES = [f"{m}/{t}/{k}" for m in CAUSAL_BASES for t in MODEL_CLASSES for k in _prompt_configs(t)]


def _config(classifier: Classifier, **changes) -> bytes:
    config = classifier.config() | changes
    return json.dumps({k: v for k, v in config.items() if v is not _DROP}).encode()


_DROP = object()


def _tensors(classifier: Classifier, **changes) -> bytes:
    tensors = classifier.tensors() | changes
    return safetensors.torch.save({k: v for k, v in tensors.items() if v is not _DROP})


def _read(classifier: Classifier, config_bytes: bytes | None = None, model_bytes: bytes | None = None, shape=None):
    return read_peft_files(
        classifier.config_bytes if config_bytes is None else config_bytes,
        classifier.model_bytes if model_bytes is None else model_bytes,
        shape or classifier.shape,
        LIMITS,
    )


# ---- reading -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_NAMES)
def test_every_classifier_reads_with_its_head(classifiers, name):
    classifier = classifiers[name]
    spec = _read(classifier)
    tensors = classifier.tensors()
    module = "classifier" if classifier.head_names()[0].startswith("base_model.classifier") else "score"
    assert spec.task_kind is TASK_KINDS[classifier.task_type]
    assert spec.head is not None
    assert torch.equal(spec.head.weight, tensors[f"base_model.{module}.weight"].float())
    assert spec.head.weight.shape == (NUM_LABELS, classifier.shape.hidden_size)
    assert spec.head.weight.dtype == torch.float32 and spec.head.weight.is_contiguous()
    bias = tensors.get(f"base_model.{module}.bias")
    assert (spec.head.bias is None) == (bias is None)
    if bias is not None:
        assert torch.equal(spec.head.bias, bias.float())
    assert spec.head.labels == ("LABEL_0", "LABEL_1", "LABEL_2")
    assert spec.nbytes == spec.tensor.numel() * 4 + spec.head.nbytes


@pytest.mark.parametrize("name", ALL_NAMES)
def test_the_prompt_reads_as_the_same_adapter_saved_for_generation(classifiers, name):
    """The head is split off before the prompt readers run: the prompt is what a CAUSAL_LM adapter would give."""
    classifier = classifiers[name]
    prompt_only = {k: v for k, v in classifier.tensors().items() if not k.startswith("base_model.")}
    as_causal = _read(
        classifier,
        _config(classifier, task_type="CAUSAL_LM", modules_to_save=None),
        safetensors.torch.save(prompt_only),
    )
    spec = _read(classifier)
    assert as_causal.task_kind is TaskKind.GENERATE and as_causal.head is None
    assert (spec.peft_type, spec.kind, spec.num_variants) == (
        as_causal.peft_type,
        as_causal.kind,
        as_causal.num_variants,
    )
    assert torch.equal(spec.tensor, as_causal.tensor)


def test_the_head_modules_are_the_models_own(classifiers):
    """Llama names its head `score` (with a bias for TOKEN_CLS); GPT-2's token classifier is `classifier`."""
    assert classifiers["llama/SEQ_CLS/prompt_tuning"].head_names() == ["base_model.score.weight"]
    assert classifiers["llama/TOKEN_CLS/prefix"].head_names() == ["base_model.score.bias", "base_model.score.weight"]
    assert classifiers["gpt2/TOKEN_CLS/multitask"].head_names() == [
        "base_model.classifier.bias",
        "base_model.classifier.weight",
    ]


def test_labels_come_from_the_config(classifiers):
    classifier = classifiers["llama/SEQ_CLS/prompt_tuning"]
    spec = _read(classifier, _config(classifier, labels=["negative", "neutral", "positive"]))
    assert spec.head.labels == ("negative", "neutral", "positive")


def test_with_labels_sets_the_config_field(classifiers):
    classifier = classifiers["gpt2/TOKEN_CLS/p_tuning"]
    merged = with_labels(classifier.config_bytes, b'["O", "B-LOC", "I-LOC"]')
    assert json.loads(merged) == classifier.config() | {"labels": ["O", "B-LOC", "I-LOC"]}
    assert _read(classifier, merged).head.labels == ("O", "B-LOC", "I-LOC")


@pytest.mark.parametrize(
    "labels_bytes, words",
    [
        (b"not json", ["labels", "JSON"]),
        (b'{"a": 1}', ["labels", "list", "dict"]),
        (b'["a", 2]', ["labels", "[1]", "string"]),
        (b'["a", ""]', ["labels", "[1]", "non-empty"]),
        (b'["a", "a"]', ["labels", '"a"', "twice"]),
        (json.dumps(["x" * 129]).encode(), ["labels", "[0]", "129", "128"]),
    ],
)
def test_with_labels_refuses_what_is_not_a_list_of_names(classifiers, labels_bytes, words):
    with pytest.raises(InvalidPromptError) as caught:
        with_labels(classifiers["llama/SEQ_CLS/prompt_tuning"].config_bytes, labels_bytes)
    assert all(word in str(caught.value) for word in words), str(caught.value)


# ---- refusals ------------------------------------------------------------------------------------------------


def _nan_head(classifier: Classifier) -> bytes:
    weight = classifier.tensors()["base_model.score.weight"].clone()
    weight[1, 2] = float("nan")
    return _tensors(classifier, **{"base_model.score.weight": weight})


# id -> (classifier, build(classifier) -> (config_bytes, model_bytes), error type, words the message must contain)
REFUSALS = {
    "head rows and hidden swapped": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (c.config_bytes, _tensors(c, **{"base_model.score.weight": torch.zeros(64, NUM_LABELS)})),
        InvalidPromptError,
        ["base_model.score.weight", "[64, 3]", "[64, 64]"],
    ),
    "head of three dimensions": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (c.config_bytes, _tensors(c, **{"base_model.score.weight": torch.zeros(3, 64, 1)})),
        InvalidPromptError,
        ["base_model.score.weight", "[3, 64, 1]", "num_labels"],
    ),
    "bias of the wrong length": (
        "llama/TOKEN_CLS/prompt_tuning",
        lambda c: (c.config_bytes, _tensors(c, **{"base_model.score.bias": torch.zeros(4)})),
        InvalidPromptError,
        ["base_model.score.bias", "[4]", "[3]"],
    ),
    "nan in the head": (
        "llama/SEQ_CLS/multitask",
        lambda c: (c.config_bytes, _nan_head(c)),
        InvalidPromptError,
        ["base_model.score.weight", "1 NaN"],
    ),
    "no head": (
        "llama/SEQ_CLS/prefix",
        lambda c: (c.config_bytes, _tensors(c, **{"base_model.score.weight": _DROP})),
        InvalidPromptError,
        ["no classifier head", "base_model.score.weight", "base_model.classifier.weight"],
    ),
    "bias without weight": (
        "gpt2/TOKEN_CLS/prompt_tuning",
        lambda c: (c.config_bytes, _tensors(c, **{"base_model.classifier.weight": _DROP})),
        InvalidPromptError,
        ["base_model.classifier.bias", "no 'base_model.classifier.weight'"],
    ),
    "score and classifier": (
        "llama/SEQ_CLS/p_tuning",
        lambda c: (c.config_bytes, _tensors(c, **{"base_model.classifier.weight": torch.zeros(3, 64)})),
        InvalidPromptError,
        ["two classifier heads", "classifier", "score"],
    ),
    "too many labels": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (
            c.config_bytes,
            _tensors(c, **{"base_model.score.weight": torch.zeros(MAX_NUM_LABELS + 1, 64)}),
        ),
        PromptTooLargeError,
        ["base_model.score.weight", str(MAX_NUM_LABELS + 1), str(MAX_NUM_LABELS)],
    ),
    "labels too few": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (_config(c, labels=["a", "b"]), c.model_bytes),
        InvalidPromptError,
        ["labels", "2 entries", "3 rows"],
    ),
    "labels not strings": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (_config(c, labels=["a", 1, "c"]), c.model_bytes),
        InvalidPromptError,
        ["adapter_config.json", "labels[1]", "string"],
    ),
    "labels not a list": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (_config(c, labels="a,b,c"), c.model_bytes),
        InvalidPromptError,
        ["adapter_config.json", "labels", "list"],
    ),
    "labels on a CAUSAL_LM adapter": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (_config(c, task_type="CAUSAL_LM", modules_to_save=None, labels=["a"]), _prompt_only(c)),
        InvalidPromptError,
        ["labels", "CAUSAL_LM"],
    ),
    "modules_to_save names another module": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (_config(c, modules_to_save=["score", "lm_head"]), c.model_bytes),
        InvalidPromptError,
        ["modules_to_save", "lm_head", "classifier", "score"],
    ),
    "modules_to_save not a list": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (_config(c, modules_to_save="score"), c.model_bytes),
        InvalidPromptError,
        ["modules_to_save", "list"],
    ),
    "modules_to_save holds a non-string": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (_config(c, modules_to_save=[["score"]]), c.model_bytes),
        InvalidPromptError,
        ["modules_to_save", "list"],
    ),
    "CAUSAL_LM with head tensors": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (_config(c, task_type="CAUSAL_LM", modules_to_save=None), c.model_bytes),
        InvalidPromptError,
        ["unexpected tensor", "base_model.score.weight"],
    ),
    "CAUSAL_LM with modules_to_save": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (_config(c, task_type="CAUSAL_LM"), c.model_bytes),
        InvalidPromptError,
        ["modules_to_save must be null"],
    ),
    "other tensors stay refused": (
        "llama/TOKEN_CLS/prompt_tuning",
        lambda c: (c.config_bytes, _tensors(c, **{"base_model.model.norm.weight": torch.zeros(64)})),
        InvalidPromptError,
        ["unexpected tensor", "base_model.model.norm.weight"],
    ),
    "task_type seq2seq": (
        "llama/SEQ_CLS/prompt_tuning",
        lambda c: (_config(c, task_type="SEQ_2_SEQ_LM"), c.model_bytes),
        InvalidPromptError,
        ["task_type", "CAUSAL_LM", "SEQ_CLS", "TOKEN_CLS", "SEQ_2_SEQ_LM"],
    ),
}


def _prompt_only(classifier: Classifier) -> bytes:
    return safetensors.torch.save({k: v for k, v in classifier.tensors().items() if not k.startswith("base_model.")})


@pytest.mark.parametrize("case", list(REFUSALS))
def test_flawed_classifier_is_refused_with_a_clear_message(classifiers, case):
    name, build, error_type, words = REFUSALS[case]
    config_bytes, model_bytes = build(classifiers[name])
    with pytest.raises(error_type) as caught:
        _read(classifiers[name], config_bytes, model_bytes)
    assert all(word in str(caught.value) for word in words), str(caught.value)


def test_a_head_that_overflows_the_serving_dtype_is_refused(classifiers):
    classifier = classifiers["llama/TOKEN_CLS/prompt_tuning"]
    huge = _tensors(classifier, **{"base_model.score.weight": torch.full((NUM_LABELS, 64), 1e6)})
    float16_shape = replace(classifier.shape, serving_dtype="float16")
    with pytest.raises(InvalidPromptError) as caught:
        _read(classifier, model_bytes=huge, shape=float16_shape)
    assert all(word in str(caught.value) for word in ["base_model.score.weight", "overflow", "float16"])
    assert _read(classifier, model_bytes=huge).head.weight.max() == 1e6  # fine in float32


def test_a_head_for_another_hidden_size_is_refused(classifiers):
    """The prompt fits the served model; the head, trained on a wider one, does not."""
    classifier = classifiers["gpt2/SEQ_CLS/prompt_tuning"]
    wide = _tensors(classifier, **{"base_model.score.weight": torch.zeros(NUM_LABELS, 96)})
    with pytest.raises(InvalidPromptError) as caught:
        _read(classifier, model_bytes=wide)
    assert "base_model.score.weight" in str(caught.value)
    assert "[3, 96]" in str(caught.value) and "[3, 64]" in str(caught.value)


# ---- the registry and its store ------------------------------------------------------------------------------


def test_registry_round_trip_keeps_kind_and_head(classifiers, make_registry):
    registry = make_registry()
    classifier = classifiers["llama/TOKEN_CLS/prefix_projection"]
    config_bytes = with_labels(classifier.config_bytes, b'["O", "B-PER", "I-PER"]')
    result = registry.upload("ner", config_bytes, classifier.model_bytes)
    assert (result.task_kind, result.num_labels, result.labels) == (
        TaskKind.CLASSIFY_TOKENS,
        3,
        ("O", "B-PER", "I-PER"),
    )
    ref = registry.pin("ner")
    try:
        assert ref.task_kind is TaskKind.CLASSIFY_TOKENS
        spec = registry.spec(ref)
        assert torch.equal(spec.head.weight, classifier.tensors()["base_model.score.weight"])
        assert spec.head.labels == ("O", "B-PER", "I-PER")
    finally:
        registry.unpin(ref)
    info = registry.get_task("ner").active
    assert (info.task_kind, info.num_labels, info.labels) == (TaskKind.CLASSIFY_TOKENS, 3, ("O", "B-PER", "I-PER"))


def test_a_reloaded_store_keeps_kind_and_labels(classifiers, make_registry):
    first = make_registry()
    sentiment = classifiers["gpt2/SEQ_CLS/multitask"]
    first.upload("sentiment", _config(sentiment, labels=["neg", "neu", "pos"]), sentiment.model_bytes)
    ner = classifiers["llama/TOKEN_CLS/prompt_tuning"]
    first.upload("ner", ner.config_bytes, ner.model_bytes)

    restarted = make_registry()
    assert restarted.list_tasks() == first.list_tasks()
    sentiment_info, ner_info = restarted.get_task("sentiment").active, restarted.get_task("ner").active
    assert (sentiment_info.task_kind, sentiment_info.labels) == (TaskKind.CLASSIFY_SEQUENCE, ("neg", "neu", "pos"))
    assert (ner_info.task_kind, ner_info.labels) == (TaskKind.CLASSIFY_TOKENS, ("LABEL_0", "LABEL_1", "LABEL_2"))
    ref = restarted.pin("sentiment", subtask=1)
    try:
        assert ref.task_kind is TaskKind.CLASSIFY_SEQUENCE
        spec = restarted.spec(ref)  # read from disk: the manifest's record matches the files
        assert restarted.stats().loads_by_tier["disk"] == 1
        assert torch.equal(spec.head.weight, sentiment.tensors()["base_model.score.weight"])
        assert spec.head.labels == ("neg", "neu", "pos")
    finally:
        restarted.unpin(ref)


def test_a_manifest_written_before_classification_loads_as_generate(adapters, make_registry, store_config):
    adapter = adapters["llama/prefix"]
    make_registry().upload("old", adapter.config_bytes, adapter.model_bytes)
    manifest_path = store_config.directory / "tasks" / "old" / "manifest.json"
    manifest = json.loads(manifest_path.read_bytes())
    for record in manifest["versions"]:
        for field in ("task_kind", "head_shape", "labels"):
            del record[field]
    manifest_path.write_text(json.dumps(manifest))

    restarted = make_registry()
    assert restarted.get_task("old").active.task_kind is TaskKind.GENERATE
    ref = restarted.pin("old")
    try:
        assert ref.task_kind is TaskKind.GENERATE
        assert restarted.spec(ref).head is None
    finally:
        restarted.unpin(ref)


def test_a_generation_store_skips_a_classifier_for_another_hidden_size(classifiers, make_registry, store_config):
    """`fits` checks the head too: a store may outlive a model change."""
    make_registry().upload("sentiment", *_bytes(classifiers["llama/SEQ_CLS/prompt_tuning"]))
    manifest_path = store_config.directory / "tasks" / "sentiment" / "manifest.json"
    manifest = json.loads(manifest_path.read_bytes())
    manifest["versions"][0]["head_shape"] = [NUM_LABELS, 96]
    manifest_path.write_text(json.dumps(manifest))
    restarted = make_registry()
    assert not restarted.has_task("sentiment")
    assert restarted.stats().num_damaged_entries == 1


def _bytes(classifier: Classifier) -> tuple[bytes, bytes]:
    return classifier.config_bytes, classifier.model_bytes
