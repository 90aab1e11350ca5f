"""A live status line while a run goes: requests sent / done / failed, in flight, output tokens per second."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Callable

from loadtest.loadgen.metrics import RequestRecord, percentile


class Progress:
    """Redraws one line on a terminal; elsewhere (CI logs, pipes) prints a line every `log_every_s` seconds."""

    def __init__(self, stream=sys.stderr, refresh_s: float = 0.5, log_every_s: float = 10.0):
        self.stream = stream
        self.is_tty = stream.isatty()
        self.interval_s = refresh_s if self.is_tty else log_every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, records: list[RequestRecord], clock: Callable[[], float]) -> None:
        started = clock()
        self._elapsed = lambda: clock() - started
        self._records = records
        self._thread = threading.Thread(target=self._loop, name="loadgen-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._write(self.line(self._records, self._elapsed()), final=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._write(self.line(self._records, self._elapsed()))

    def _write(self, line: str, final: bool = False) -> None:
        if self.is_tty:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    @staticmethod
    def line(records: list[RequestRecord], elapsed_s: float) -> str:
        # Reads records other threads are filling: a snapshot that may be a step behind, never a wrong total.
        sent = [r for r in records if not math.isnan(r.sent_s)]
        ended = [r for r in sent if not math.isnan(r.end_s)]
        failed = sum(r.error is not None for r in ended)
        tokens = sum(r.num_output_tokens if not math.isnan(r.end_s) else len(r.chunk_times_s) for r in sent)
        ttfts = [r.ttft_s * 1000 for r in ended if r.ttft_s is not None]
        ttft = f" | p50 TTFT {percentile(ttfts, 50):.0f} ms" if ttfts else ""
        rate = tokens / elapsed_s if elapsed_s > 0 else 0.0
        return (
            f"[{elapsed_s:6.1f} s] sent {len(sent)}/{len(records)}  done {len(ended) - failed}  "
            f"failed {failed}  in flight {len(sent) - len(ended)} | {rate:.1f} output tok/s{ttft}"
        )
