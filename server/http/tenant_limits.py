"""Per-tenant `max_concurrent` and `tokens_per_minute`, checked when a request arrives, before it costs anything.

Concurrency counts a tenant's generation requests from admission until their last output (running + waiting).
Tokens are counted over a sliding minute: a request's prompt tokens (virtual ones included) once it is tokenized,
its generated tokens as they stream. A request is admitted while the tenant's last minute stays under its limit,
and may take it over (its size is unknown until it is tokenized and generated); the tenant then waits until enough
of the minute has passed, which `Retry-After` says exactly. Used from the event loop thread only.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from prompt_store.tenants import TenantQuota
from server.http.errors import RateLimitedError
from server.http.metrics import Metrics

WINDOW_S = 60.0


@dataclass
class _Usage:
    num_in_flight: int = 0
    window: deque[tuple[float, int]] = field(default_factory=deque)  # (time, tokens), oldest first
    window_tokens: int = 0

    def expire(self, now: float) -> None:
        while self.window and self.window[0][0] <= now - WINDOW_S:
            self.window_tokens -= self.window.popleft()[1]

    def seconds_until_under(self, limit: int, now: float) -> float:
        """How long until the tokens of the last minute fall below `limit`, as old entries age out."""
        remaining = self.window_tokens
        for at, tokens in self.window:
            remaining -= tokens
            if remaining < limit:
                return at + WINDOW_S - now
        return 0.0

    @property
    def is_idle(self) -> bool:
        return self.num_in_flight == 0 and not self.window


class Lease:
    """One admitted request's hold on its tenant's limits; `release()` once, by whoever ends the request."""

    def __init__(self, limits: TenantLimits, tenant: str | None, label: str, usage: _Usage | None):
        self._limits = limits
        self._tenant = tenant
        self.label = label  # the tenant's metric label
        self._usage = usage  # None: no limit to account for (anonymous and operator traffic)
        self.handed_over = False  # a Generation took it over and releases it when the request ends
        self._is_released = False

    def charge(self, num_tokens: int, kind: str) -> None:
        """`kind`: "prompt" | "generated"."""
        if num_tokens <= 0:
            return
        self._limits.metrics.tenant_tokens.labels(self.label, kind).inc(num_tokens)
        if self._usage is not None:
            self._usage.window.append((self._limits.clock(), num_tokens))
            self._usage.window_tokens += num_tokens

    def release(self) -> None:
        if self._is_released:
            return
        self._is_released = True
        if self._usage is not None and self._tenant is not None:
            self._usage.num_in_flight -= 1
            self._limits.forget_if_idle(self._tenant)


class TenantLimits:
    def __init__(self, metrics: Metrics, clock: Callable[[], float] = time.monotonic):
        self.metrics = metrics
        self.clock = clock
        self._usage: dict[str, _Usage] = {}  # tenant -> its usage; an idle tenant's entry is dropped

    def acquire(self, tenant: str | None, label: str, quota: TenantQuota | None) -> Lease:
        """Admit one request of `tenant` (None: no quota applies) or raise RateLimitedError."""
        if tenant is None or quota is None:
            return Lease(self, tenant, label, None)
        usage = self._usage.setdefault(tenant, _Usage())
        now = self.clock()
        usage.expire(now)
        if quota.max_concurrent is not None and usage.num_in_flight >= quota.max_concurrent:
            self._refuse(tenant, label, "concurrency")
            raise RateLimitedError(
                f"tenant {tenant!r} has {usage.num_in_flight} requests in flight, its max_concurrent quota", 1.0
            )
        if quota.tokens_per_minute is not None and usage.window_tokens >= quota.tokens_per_minute:
            self._refuse(tenant, label, "tokens")
            retry_after = usage.seconds_until_under(quota.tokens_per_minute, now)
            raise RateLimitedError(
                f"tenant {tenant!r} used {usage.window_tokens} tokens in the last minute, its tokens_per_minute "
                f"quota is {quota.tokens_per_minute}",
                retry_after,
            )
        usage.num_in_flight += 1
        return Lease(self, tenant, label, usage)

    def forget_if_idle(self, tenant: str) -> None:
        usage = self._usage.get(tenant)
        if usage is not None:
            usage.expire(self.clock())
            if usage.is_idle:
                del self._usage[tenant]

    def _refuse(self, tenant: str, label: str, reason: str) -> None:
        self.metrics.tenant_rate_limited.labels(label, reason).inc()
        self.forget_if_idle(tenant)
