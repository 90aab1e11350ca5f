"""One mixed batch on a real model: promptswap's engine vs plain `model.generate`, one request at a time.

    python -m loadtest.mixed_batch_bench [--model smollm2-135m-instruct] [--requests 16] [--new-tokens 32]

Half the requests use prompt-tuning tasks, a quarter prefix-tuning tasks, a quarter the base model; every
request generates exactly --new-tokens tokens (EOS ignored) so both arms produce the same number of tokens.
Needs peft (a test dependency) to write the adapters it serves.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from prompt_store.registry import PromptRegistry
from server.config import EngineConfig, StoreConfig, load_config
from server.engine.llm_engine import LLMEngine
from server.engine.request import GenerationRequest, SamplingParams
from server.model import load_model

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Explain photosynthesis in one sentence.",
    "Translate 'good morning' to Spanish.",
    "What is 12 times 7?",
    "Name a famous painter.",
    "Give me a synonym for happy.",
]


def write_adapter(model, peft_config, folder: Path) -> tuple[bytes, bytes]:
    from peft import get_peft_model

    peft_model = get_peft_model(model, peft_config)
    peft_model.save_pretrained(folder)
    return (folder / "adapter_config.json").read_bytes(), (folder / "adapter_model.safetensors").read_bytes()


def register_tasks(registry: PromptRegistry, model, num_virtual_tokens: int) -> list[str | None]:
    from peft import PrefixTuningConfig, PromptTuningConfig, TaskType

    tasks: list[str | None] = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            for kind, config in (
                ("pt", PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)),
                ("px", PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens)),
            ):
                name = f"{kind}{i}"
                config_bytes, model_bytes = write_adapter(copy.deepcopy(model), config, Path(tmp) / name)
                registry.upload(name, config_bytes, model_bytes)
                tasks.append(name)
    return tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = load_config({"model": args.model})
    loaded = load_model(config.model, config.cache_dir, torch.device("cpu"), torch.float32)
    tok, model = loaded.tokenizer, loaded.model
    prompts = [
        tok.apply_chat_template(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], tokenize=False, add_generation_prompt=True
        )
        for i in range(args.requests)
    ]
    ids = [tok(p).input_ids for p in prompts]

    started = time.perf_counter()
    for prompt_ids in ids:
        model.generate(
            input_ids=torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            pad_token_id=tok.eos_token_id,
        )
    generate_s = time.perf_counter() - started

    registry = PromptRegistry(loaded.shape, StoreConfig(), config.base_model_id, None)
    tasks = register_tasks(registry, model, args.virtual_tokens)
    engine = LLMEngine(EngineConfig(num_kv_blocks=1024), model, tok, registry)
    mix = [tasks[i % len(tasks)] if i % 4 else None for i in range(args.requests)]
    started = time.perf_counter()
    handles = [
        engine.add_request(
            GenerationRequest(
                f"r{i}", tuple(p), SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True), task=mix[i]
            )
        )
        for i, p in enumerate(ids)
    ]
    while engine.has_work():
        engine.step()
    engine_s = time.perf_counter() - started
    assert all(len(h.result()[0]) == args.new_tokens for h in handles)

    total = args.requests * args.new_tokens
    print(
        json.dumps(
            {
                "model": config.base_model_id,
                "requests": args.requests,
                "new_tokens_each": args.new_tokens,
                "virtual_tokens": args.virtual_tokens,
                "threads": torch.get_num_threads(),
                "generate_one_at_a_time_tok_s": round(total / generate_s, 1),
                "promptswap_mixed_batch_tok_s": round(total / engine_s, 1),
                "ratio": round(generate_s / engine_s, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
