"""Create random PEFT soft prompts for a served base model and upload them to a running promptswap server.

    python -m loadtest.upload_tasks --url http://127.0.0.1:8000 --admin-token TOKEN [--model smollm2-135m-instruct]
        [--num-tasks 100] [--virtual-tokens 20] [--kinds PROMPT_TUNING,PREFIX_TUNING]

Tasks are named pt-000, px-001, ... (kinds alternate); the load generator then finds them in /v1/models.
--model must be the server's base model (a local folder, or the default's name: its cached conversion is used).
Needs torch and peft, unlike the load generator itself.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("PROMPTSWAP_ADMIN_TOKEN"),
        help="the server's admin token (default: $PROMPTSWAP_ADMIN_TOKEN)",
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="the server's base model")
    parser.add_argument("--num-tasks", type=int, default=100)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--kinds", default="PROMPT_TUNING,PREFIX_TUNING", help="PEFT types, alternating")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.admin_token:
        parser.error("give --admin-token (or set PROMPTSWAP_ADMIN_TOKEN)")

    from loadtest.adapters import write_random_adapters

    model = _load_base(args.model)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, httpx.Client(base_url=args.url, timeout=120) as http:
        adapters = write_random_adapters(
            model, Path(tmp), args.num_tasks, args.virtual_tokens, tuple(args.kinds.split(",")), args.seed
        )
        headers = {"Authorization": f"Bearer {args.admin_token}"}
        for adapter in adapters:
            config_bytes, model_bytes = adapter.files()
            files = {
                "adapter_config": ("adapter_config.json", config_bytes),
                "adapter_model": ("adapter_model.safetensors", model_bytes),
            }
            response = http.put(f"/v1/admin/prompts/{adapter.task}", headers=headers, files=files)
            if response.status_code not in (200, 201):
                parser.exit(1, f"upload of {adapter.task} failed: {response.status_code} {response.text}\n")
    print(
        f"uploaded {len(adapters)} tasks ({args.kinds}, {args.virtual_tokens} virtual tokens) to {args.url} "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


def _load_base(model: str):
    from transformers import AutoModelForCausalLM

    from server.config import load_config
    from server.model.loader import resolve_model_path

    path = resolve_model_path(model, load_config({}).cache_dir)
    return AutoModelForCausalLM.from_pretrained(path, local_files_only=True)


if __name__ == "__main__":
    raise SystemExit(main())
