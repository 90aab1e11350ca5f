"""Token-length distributions for prompts and outputs, written on the command line as `KIND:ARGS`."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

_KINDS = {"fixed": 1, "uniform": 2, "normal": 2, "lognormal": 2}
HELP = (
    "fixed:N | uniform:LO:HI (inclusive) | normal:MEAN:STD | lognormal:MEDIAN:SIGMA; "
    "draws are rounded and clipped to [1, max]"
)


@dataclass(frozen=True)
class LengthDistribution:
    kind: str  # one of _KINDS
    params: tuple[float, ...]  # as written after the kind
    max_len: int | None = None  # draws above this are clipped to it

    @classmethod
    def parse(cls, text: str, max_len: int | None = None) -> LengthDistribution:
        kind, *raw = text.strip().split(":")
        if kind not in _KINDS or len(raw) != _KINDS[kind]:
            raise ValueError(f"length distribution {text!r}: expected {HELP}")
        try:
            params = tuple(float(value) for value in raw)
        except ValueError:
            raise ValueError(f"length distribution {text!r}: parameters must be numbers") from None
        if kind == "uniform" and params[0] > params[1]:
            raise ValueError(f"length distribution {text!r}: LO must be <= HI")
        if params[0] <= 0 or any(value < 0 for value in params):
            raise ValueError(f"length distribution {text!r}: the first parameter must be > 0, the others >= 0")
        return cls(kind, params, max_len)

    def sample(self, rng: random.Random) -> int:
        value = self._draw(rng)
        upper = self.max_len if self.max_len is not None else float("inf")
        return int(min(max(round(value), 1), upper))

    def _draw(self, rng: random.Random) -> float:
        p = self.params
        if self.kind == "fixed":
            return p[0]
        if self.kind == "uniform":
            return rng.randint(int(p[0]), int(p[1]))
        if self.kind == "normal":
            return rng.gauss(p[0], p[1])
        return rng.lognormvariate(math.log(p[0]), p[1])

    def describe(self) -> str:
        return ":".join([self.kind, *(f"{value:g}" for value in self.params)])
