"""What one arm measured, and the decode-phase rate read off per-token timestamps."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ArmResult:
    arm: str  # "a" .. "e"
    description: str
    num_requests: int  # requests this arm was timed on
    num_tokens: int  # tokens generated in the timed part (all arms: num_requests * new_tokens)
    wall_s: float  # first request submitted to last token, prefill included
    decode_tokens_per_s: float | None  # while every sequence of the first wave was decoding; None if not measured
    decode_batch: int | None  # sequences decoding together in that window
    note: str = ""  # how this arm was bounded or configured, in words
    extra: dict = field(default_factory=dict)  # arm-specific figures (adapter load time, settings)

    @property
    def tokens_per_s(self) -> float:
        return self.num_tokens / self.wall_s


def decode_rate(token_times: list[list[float]], wave_size: int) -> tuple[float | None, int]:
    """Tokens/s while the first wave was decoding, and how many sequences it held.

    `token_times`: one list of perf_counter stamps per request, in admission order; the first `wave_size` were
    admitted together. The window runs from the wave's last first token to its first last token, so inside it
    every one of them is decoding; tokens of any request stamped inside it count.
    """
    wave = [times for times in token_times[:wave_size] if len(times) >= 2]
    if not wave:
        return None, 0
    start = max(times[0] for times in wave)
    end = min(times[-1] for times in wave)
    if end <= start:
        return None, len(wave)
    num_tokens = sum(start < t <= end for times in token_times for t in times)
    return num_tokens / (end - start), len(wave)


def all_first_tokens_s(token_times: list[list[float]], wave_size: int, started: float) -> float | None:
    """Seconds from the start until every request of the first wave had its first token: the prefill phase
    (prompt materialization included), where decode tok/s does not apply."""
    firsts = [times[0] for times in token_times[:wave_size] if times]
    return max(firsts) - started if firsts else None
