"""`python -m loadtest.loadgen`: the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import httpx

from loadtest.loadgen.arrivals import FixedConcurrency, GammaArrivals
from loadtest.loadgen.client import SHAPES, ClientOptions, list_models
from loadtest.loadgen.lengths import HELP as LENGTH_HELP
from loadtest.loadgen.lengths import LengthDistribution
from loadtest.loadgen.metrics import parse_slo, summarize
from loadtest.loadgen.progress import Progress
from loadtest.loadgen.prompt_text import PromptText, load_tokenizer
from loadtest.loadgen.report import format_summary, results_document, summarize_groups, write_json
from loadtest.loadgen.runner import run_load
from loadtest.loadgen.workload import ZipfTaskMix, build_requests

DESCRIPTION = """\
Open-loop load generator for promptswap and any OpenAI-compatible server (vLLM, TGI, llama.cpp, ...).

It draws a workload up front from --seed (which task each request uses, its prompt length, its output length),
sends it at the times an arrival process gives (--rate, --burstiness) or with a fixed number of requests in
flight (--concurrency), streams every response, and reports per-request latency and the run's throughput:

  TTFT   time to first token: first streamed content - request sent
  TPOT   time per output token after the first: (end - first content) / (output tokens - 1)
  ITL    inter-token latency: gaps between streamed chunks
  E2E    end-to-end latency: end - request sent
  throughput  completed requests and tokens per second, first send to last end
  goodput     requests per second that completed within every --slo
  errors      failed requests by kind (http_429, http_503, timeout, ...)

Open loop: with --rate, requests go out on schedule whether or not earlier ones finished, so an overloaded server
shows growing queues and latencies (and 429s) instead of a client that politely slows down. "send lag" in the
report is how far the generator itself fell behind its schedule; keep it near 0.

Tasks: promptswap serves soft prompts as models; by default every model /v1/models lists after the first (the
base model) is a task, mixed by a Zipf law (--zipf) with --base-fraction of requests to the base model. Create
and upload random tasks to a server with `python -m loadtest.upload_tasks`.

Output: PREFIX.json (config, summary, per-group summaries, per-request records) and PREFIX_latency.png,
PREFIX_timeline.png; a progress line while it runs (stderr).
"""

EPILOG = """\
examples:
  # Poisson arrivals at 2 req/s, 200 requests, Zipf mix over the server's tasks, 10% base-model requests
  python -m loadtest.loadgen --url http://127.0.0.1:8000 --rate 2 --num-requests 200 \\
      --input-len uniform:32:256 --output-len fixed:64 --slo ttft:2000 --slo tpot:300 --out results/poisson

  # bursty arrivals (gamma, burstiness 0.25 = coefficient of variation 2), capped at 64 in flight
  python -m loadtest.loadgen --rate 4 --burstiness 0.25 --max-concurrency 64 --out results/bursty

  # closed loop: 64 requests in flight, chat endpoint, exact prompt lengths from a local tokenizer
  python -m loadtest.loadgen --concurrency 64 --endpoint chat --tokenizer ~/.cache/promptswap/models/smollm2-135m-instruct

  # another OpenAI-compatible server, base model only
  python -m loadtest.loadgen --url http://127.0.0.1:8001 --model my-model --tasks none --rate 1
"""  # noqa: E501 - the help text's examples are copy-pastable one-line commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.loadgen",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_argument_group("server")
    target.add_argument("--url", default="http://127.0.0.1:8000", help="server root URL (default: %(default)s)")
    target.add_argument(
        "--endpoint",
        choices=sorted(SHAPES),
        default="completions",
        help="completions: /v1/completions; chat: /v1/chat/completions (the prompt is one user "
        "message, the chat template adds tokens); generate: promptswap's /v1/generate?task= "
        "(no ignore_eos there). Default: %(default)s",
    )
    target.add_argument("--model", help="the base model's id (default: the first model /v1/models lists)")
    target.add_argument("--api-key", help="sent as 'Authorization: Bearer KEY'")
    target.add_argument("--timeout", type=float, default=600.0, help="per-request timeout, s (default: %(default)s)")
    target.add_argument(
        "--extra-body",
        type=json.loads,
        default={},
        metavar="JSON",
        help="fields merged into every request body, e.g. '{\"top_k\": 1}'",
    )

    load = parser.add_argument_group("arrivals")
    load.add_argument(
        "--rate",
        type=float,
        help="mean requests per second of the open-loop arrival process; 'inf' sends everything at once",
    )
    load.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="gamma shape of the inter-arrival gaps: 1 = Poisson, < 1 burstier (default: 1)",
    )
    load.add_argument("--concurrency", type=int, help="closed loop instead of --rate: keep this many in flight")
    load.add_argument("--max-concurrency", type=int, help="with --rate: at most this many in flight")
    load.add_argument("--num-requests", type=int, default=100, help="requests measured (default: %(default)s)")
    load.add_argument(
        "--warmup", type=int, default=2, help="requests sent one by one first, not measured (default: %(default)s)"
    )

    work = parser.add_argument_group("workload")
    work.add_argument(
        "--tasks",
        default="auto",
        help="auto: every model /v1/models lists after the base; none: base model only; "
        "or a comma-separated list of task names (default: auto)",
    )
    work.add_argument("--num-tasks", type=int, help="use only the first N tasks (by name)")
    work.add_argument(
        "--zipf",
        type=float,
        default=1.0,
        help="Zipf exponent of task popularity: 0 = uniform, 1 = rank-k task k times rarer than the first (default: 1)",
    )
    work.add_argument(
        "--base-fraction",
        type=float,
        default=0.1,
        help="fraction of requests to the base model, no task (default: %(default)s)",
    )
    work.add_argument(
        "--input-len", default="uniform:32:256", help=f"prompt tokens: {LENGTH_HELP} (default: %(default)s)"
    )
    work.add_argument(
        "--output-len", default="fixed:64", help="output tokens (max_tokens), same forms (default: %(default)s)"
    )
    work.add_argument("--max-input-len", type=int, default=2048, help="clip prompt lengths (default: %(default)s)")
    work.add_argument(
        "--tokenizer",
        help="local tokenizer folder for exact prompt lengths (never the Hub); "
        "without it a prompt of N tokens is N common words",
    )
    work.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    work.add_argument(
        "--no-ignore-eos",
        dest="ignore_eos",
        action="store_false",
        help="let outputs end at EOS (default: ignore_eos, every request generates max_tokens)",
    )
    work.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="plain responses: only E2E is measured (no TTFT/TPOT/ITL)",
    )
    work.add_argument("--seed", type=int, default=0, help="workload and arrival seed (default: %(default)s)")

    out = parser.add_argument_group("results")
    out.add_argument(
        "--slo",
        action="append",
        default=[],
        metavar="METRIC:MS",
        help="service-level objective for goodput, repeatable: ttft:MS, tpot:MS, e2e:MS",
    )
    out.add_argument(
        "--out",
        type=Path,
        default=Path("loadgen-results/run"),
        help="output prefix: PREFIX.json, PREFIX_*.png (default: %(default)s)",
    )
    out.add_argument("--label", help="run name in the report and plots (default: derived from the options)")
    out.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    out.add_argument(
        "--no-request-records",
        dest="request_records",
        action="store_false",
        help="leave the per-request records out of the JSON",
    )
    out.add_argument("--no-progress", dest="progress", action="store_false", help="no progress line")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except ValueError as exc:  # a bad option value, found while building the run
        parser.error(str(exc))
    except httpx.HTTPError as exc:  # listing the server's models failed
        print(f"loadgen: cannot list models at {args.url}: {exc!r}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    arrivals = _arrivals(args)
    slos = dict(parse_slo(text) for text in args.slo)
    base_model, tasks = await _base_and_tasks(args)
    mix = ZipfTaskMix(tasks, args.zipf, args.base_fraction if tasks else 1.0, seed=args.seed)
    text = PromptText(load_tokenizer(args.tokenizer))
    specs = build_requests(
        args.num_requests,
        mix,
        LengthDistribution.parse(args.input_len, args.max_input_len),
        LengthDistribution.parse(args.output_len),
        text,
        seed=args.seed,
    )
    options = ClientOptions(
        url=args.url,
        base_model=base_model,
        shape=args.endpoint,
        stream=args.stream,
        temperature=args.temperature,
        ignore_eos=args.ignore_eos,
        api_key=args.api_key,
        timeout_s=args.timeout,
        extra_body=args.extra_body,
    )
    label = args.label or f"{arrivals.describe()}, {len(tasks)} tasks"
    print(
        f"{label}: {args.num_requests} requests to {args.url} ({args.endpoint}), base model {base_model!r}",
        file=sys.stderr,
    )
    records = await run_load(
        specs, arrivals, options, args.max_concurrency, args.seed, args.warmup, Progress() if args.progress else None
    )

    summary = summarize(records, slos)
    print(format_summary(summary, label))
    for name, group in summarize_groups(records, slos).items():
        print(
            f"  {name:<5} {group.num_completed:>5} done  TTFT p50 {group.ttft_ms.p50:8.1f} ms  "
            f"TPOT p50 {group.tpot_ms.p50:7.1f} ms  E2E p50 {group.e2e_ms.p50:8.1f} ms"
        )
    config = _config(args, arrivals, base_model, tasks, mix, text, label)
    path = write_json(results_document(config, records, summary, args.request_records), Path(f"{args.out}.json"))
    print(f"results: {path}")
    if args.plots:
        from loadtest.loadgen.plots import write_plots

        for plot in write_plots(records, args.out, label):
            print(f"plot:    {plot}")
    return 0 if summary.num_completed else 1


def _arrivals(args: argparse.Namespace):
    if (args.rate is None) == (args.concurrency is None):
        raise ValueError("give exactly one of --rate (open loop) or --concurrency (closed loop)")
    if args.concurrency is not None:
        if args.max_concurrency is not None:
            raise ValueError("--max-concurrency goes with --rate; --concurrency already fixes requests in flight")
        return FixedConcurrency(args.concurrency)
    return GammaArrivals(args.rate, args.burstiness)


async def _base_and_tasks(args: argparse.Namespace) -> tuple[str, list[str]]:
    listed = await list_models(args.url, args.api_key) if args.model is None or args.tasks == "auto" else []
    base_model = args.model or listed[0]
    if args.tasks == "none":
        tasks = []
    elif args.tasks == "auto":
        tasks = sorted(model for model in listed if model != base_model)
    else:
        tasks = [name.strip() for name in args.tasks.split(",") if name.strip()]
    return base_model, tasks[: args.num_tasks] if args.num_tasks is not None else tasks


def _config(args, arrivals, base_model, tasks, mix, text, label) -> dict:
    return {
        "label": label,
        "url": args.url,
        "endpoint": args.endpoint,
        "base_model": base_model,
        "arrivals": arrivals.describe(),
        "rate": args.rate,
        "burstiness": args.burstiness,
        "concurrency": args.concurrency,
        "max_concurrency": args.max_concurrency,
        "num_requests": args.num_requests,
        "num_warmup": args.warmup,
        "num_tasks": len(tasks),
        "zipf_exponent": mix.exponent,
        "base_fraction": mix.base_fraction,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "exact_prompt_lengths": text.is_exact,
        "stream": args.stream,
        "ignore_eos": args.ignore_eos,
        "temperature": args.temperature,
        "seed": args.seed,
    }
