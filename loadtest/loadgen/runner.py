"""Driving a run: send each request when the arrival process says (open loop), or keep a fixed number in flight
(closed loop), and collect one RequestRecord per request."""

from __future__ import annotations

import asyncio
import random
import time

from loadtest.loadgen.arrivals import FixedConcurrency, GammaArrivals
from loadtest.loadgen.client import ClientOptions, LoadClient
from loadtest.loadgen.metrics import RequestRecord
from loadtest.loadgen.progress import Progress
from loadtest.loadgen.workload import RequestSpec


async def run_load(
    specs: list[RequestSpec],
    arrivals: GammaArrivals | FixedConcurrency,
    options: ClientOptions,
    max_concurrency: int | None = None,
    seed: int = 0,
    num_warmup: int = 0,
    progress: Progress | None = None,
) -> list[RequestRecord]:
    """Run `specs` and return their records in spec order. `max_concurrency` caps requests in flight under an
    arrival process (a request due while the cap is reached waits; its latency counts from when it is sent)."""
    started = time.perf_counter()
    client = LoadClient(options, clock=lambda: time.perf_counter() - started)  # reads `started` at each call
    try:
        await _warm_up(client, specs[:num_warmup])
        started = time.perf_counter()  # the run's time 0 is after the warm-up
        records = [RequestRecord(spec.index, spec.task, max_tokens=spec.max_tokens) for spec in specs]
        if progress:
            progress.start(records, time.perf_counter)
        if isinstance(arrivals, FixedConcurrency):
            await _closed_loop(client, specs, records, arrivals.concurrency)
        else:
            due = arrivals.send_times(len(specs), random.Random(seed))
            await _open_loop(client, specs, records, due, max_concurrency)
    finally:
        if progress:
            progress.stop()
        await client.close()
    return records


async def _warm_up(client: LoadClient, specs: list[RequestSpec]) -> None:
    """A few requests one at a time, not recorded: connections opened, server code paths warm."""
    for spec in specs:
        await client.send(spec, RequestRecord(spec.index, spec.task))


async def _open_loop(client: LoadClient, specs, records, due_s: list[float], max_concurrency: int | None) -> None:
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def send(spec: RequestSpec, record: RequestRecord) -> None:
        if slots is None:
            return await client.send(spec, record)
        async with slots:
            await client.send(spec, record)

    tasks = []
    for spec, record, due in zip(specs, records, due_s):
        delay = due - client.clock()
        if delay > 0:
            await asyncio.sleep(delay)
        record.due_s = due
        tasks.append(asyncio.create_task(send(spec, record)))
    await asyncio.gather(*tasks)


async def _closed_loop(client: LoadClient, specs, records, concurrency: int) -> None:
    queue = list(zip(specs, records))
    queue.reverse()

    async def worker() -> None:
        while queue:
            spec, record = queue.pop()
            record.due_s = client.clock()
            await client.send(spec, record)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
