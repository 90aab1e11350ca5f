"""When requests are sent: an open-loop arrival process (Poisson or bursty gamma) or a fixed concurrency.

Open loop means send times are drawn up front and do not wait for responses, so a slow server faces a growing
queue instead of a politely slowed client (the closed-loop mistake that hides overload).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class GammaArrivals:
    """Inter-arrival gaps drawn from Gamma(shape=burstiness, mean=1/rate).

    burstiness 1 is a Poisson process (exponential gaps); below 1 requests come in bursts (coefficient of variation
    1/sqrt(burstiness) > 1); above 1 they are more regular than Poisson. vLLM's `--burstiness` means the same.
    """

    rate: float  # mean requests per second; math.inf sends every request at time 0
    burstiness: float = 1.0  # gamma shape parameter

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise ValueError(f"rate must be > 0 requests/s, got {self.rate}")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness must be > 0, got {self.burstiness}")

    def send_times(self, num_requests: int, rng: random.Random) -> list[float]:
        """Seconds after the start at which each request is due, non-decreasing, the first gap included."""
        if math.isinf(self.rate):
            return [0.0] * num_requests
        scale = 1.0 / (self.rate * self.burstiness)
        times, now = [], 0.0
        for _ in range(num_requests):
            now += rng.gammavariate(self.burstiness, scale)
            times.append(now)
        return times

    def describe(self) -> str:
        if math.isinf(self.rate):
            return "all requests at once"
        kind = "Poisson" if self.burstiness == 1.0 else f"gamma (burstiness {self.burstiness:g})"
        return f"{kind} arrivals at {self.rate:g} req/s"


@dataclass(frozen=True)
class FixedConcurrency:
    """A closed loop: `concurrency` requests in flight, each finished one replaced at once by the next."""

    concurrency: int

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")

    def describe(self) -> str:
        return f"fixed concurrency {self.concurrency}"
