"""Classification beside generation on SmolLM2: promptswap's engine against the PEFT pattern, in one run.

    python -m loadtest.classify_bench [--texts 64] [--tasks 8] [--streams 16] [--new-tokens 32] [--json FILE]

8 SEQ_CLS tasks (P-Tuning v2: prefix tuning without projection, and prompt tuning, alternating; random prompts
and heads written by PEFT) classify 64 short texts, spread over the tasks, while 16 generation streams decode on
the base model. promptswap: every request submitted at once to one engine, classification rows packed with the
generation streams' steps. PEFT: one `PeftModelForSequenceClassification` forward per text, alone, its task's
model loaded beforehand (the generation streams are not run in this arm: PEFT cannot batch them with
classification, so the arm only gets easier). Prints classifications per second for both, their ratio, and the
share of labels that agree with PEFT's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from prompt_store.registry import PromptRegistry
from server.config import EngineConfig, StoreConfig, load_config
from server.engine.llm_engine import LLMEngine
from server.engine.request import FinishReason, GenerationRequest, SamplingParams
from server.model import load_model
from server.model.default_model import ensure_default_model

TEXTS = [
    "The delivery was late and the box was damaged.",
    "Absolutely loved the new update!",
    "Customer support never answered my emails.",
    "Great value for the price.",
    "The app crashes every time I open it.",
    "Fast shipping, works as described.",
    "I want a refund.",
    "Five stars, would buy again.",
]
QUESTIONS = ["What is the capital of France?", "Name three colours.", "Write a haiku about rain.", "What is 7 x 6?"]


def write_classifiers(model_dir: Path, out: Path, num_tasks: int) -> list[Path]:
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    folders = []
    for i in range(num_tasks):
        torch.manual_seed(i)
        base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2 + i % 3)
        if i % 2 == 0:
            config = PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=16)
        else:
            config = PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=16)
        peft_model = get_peft_model(base, config)
        with torch.no_grad():  # random heads, so the tasks' labels differ
            for name, param in peft_model.named_parameters():
                if "score" in name:
                    param.normal_(0, 0.05)
        folder = out / f"cls{i}"
        peft_model.save_pretrained(folder)
        folders.append(folder)
    return folders


def run_promptswap(model_dir: Path, folders: list[Path], cases, num_streams: int, new_tokens: int):
    loaded = load_model(str(model_dir), Path("/nonexistent-cache"), torch.device("cpu"), torch.float32)
    registry = PromptRegistry(loaded.shape, StoreConfig(), "base", None)
    for i, folder in enumerate(folders):
        registry.upload(
            f"cls{i}",
            (folder / "adapter_config.json").read_bytes(),
            (folder / "adapter_model.safetensors").read_bytes(),
        )
    engine = LLMEngine(EngineConfig(num_kv_blocks=2048), loaded.model, loaded.tokenizer, registry)
    tokenizer = loaded.tokenizer
    # Warm-up: every task's prompt materialized once, as it is on a server that has served the task before.
    for i in range(len(folders)):
        engine.add_request(
            GenerationRequest(
                f"warm{i}", tuple(tokenizer("hi").input_ids), SamplingParams(), task=f"cls{i}", classify=True
            )
        )
    while engine.has_work():
        engine.step()
    streams = []
    for s in range(num_streams):
        messages = [{"role": "user", "content": QUESTIONS[s % len(QUESTIONS)]}]
        ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)).input_ids
        sampling = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
        streams.append(engine.add_request(GenerationRequest(f"gen{s}", tuple(ids), sampling)))
    start = time.perf_counter()
    handles = [
        engine.add_request(
            GenerationRequest(
                f"c{j}", tuple(tokenizer(text).input_ids), SamplingParams(), task=f"cls{task}", classify=True
            )
        )
        for j, (task, text) in enumerate(cases)
    ]
    pending, classified_at = {f"c{j}" for j in range(len(cases))}, None
    while engine.has_work():
        pending -= {out.request_id for out in engine.step() if out.finished}
        if classified_at is None and not pending:
            classified_at = time.perf_counter()
    total = time.perf_counter() - start
    results = []
    for handle in handles:
        last = list(handle.outputs(timeout=5))[-1]
        assert last.finish_reason is FinishReason.CLASSIFIED, last
        results.append(torch.tensor(last.classification.logits[0]))
    generated = sum(len([t for o in s.outputs(timeout=5) for t in o.new_token_ids]) for s in streams)
    assert classified_at is not None  # every classification finished before the streams did
    return results, classified_at - start, total, generated


def run_peft(model_dir: Path, folders: list[Path], cases):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    models = []
    for i, folder in enumerate(folders):
        base = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2 + i % 3)
        models.append(PeftModel.from_pretrained(base, folder).eval())
    with torch.inference_mode():
        models[0](input_ids=torch.tensor([tokenizer("hi").input_ids]))  # warm-up
        start = time.perf_counter()
        results = [
            models[task](input_ids=torch.tensor([tokenizer(text).input_ids])).logits[0].float() for task, text in cases
        ]
        elapsed = time.perf_counter() - start
    return results, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    model_dir = ensure_default_model(load_config(flags={}).cache_dir)
    cases = [(j % args.tasks, TEXTS[j % len(TEXTS)]) for j in range(args.texts)]
    with tempfile.TemporaryDirectory() as tmp:
        folders = write_classifiers(model_dir, Path(tmp), args.tasks)
        peft_results, peft_s = run_peft(model_dir, folders, cases)
        ours, classified_s, total_s, generated = run_promptswap(
            model_dir, folders, cases, args.streams, args.new_tokens
        )
    agree = sum(int(a.argmax() == b.argmax()) for a, b in zip(ours, peft_results, strict=True))
    max_rel = max(
        float(((a - b).abs() / b.abs().clamp(min=1e-6)).max()) for a, b in zip(ours, peft_results, strict=True)
    )
    peft_rate, our_rate = args.texts / peft_s, args.texts / classified_s
    print(f"{args.texts} texts over {args.tasks} SEQ_CLS tasks; promptswap also decodes {args.streams} streams")
    print(f"PEFT, one forward per text: {peft_s:.2f} s, {peft_rate:.1f} classifications/s")
    print(f"promptswap, mixed with generation: all classified after {classified_s:.2f} s, {our_rate:.1f}/s")
    print(f"  ({generated} tokens generated in {total_s:.2f} s, {generated / total_s:.1f} tokens/s)")
    print(f"ratio {our_rate / peft_rate:.2f}x; agreeing labels {agree}/{args.texts}; max rel. diff {max_rel:.1e}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "texts": args.texts,
                    "tasks": args.tasks,
                    "streams": args.streams,
                    "new_tokens": args.new_tokens,
                    "peft_s": peft_s,
                    "promptswap_classified_s": classified_s,
                    "promptswap_total_s": total_s,
                    "generated_tokens": generated,
                    "ratio": our_rate / peft_rate,
                    "label_agreement": agree / args.texts,
                    "max_relative_logit_difference": max_rel,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
