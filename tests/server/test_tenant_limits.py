"""TenantLimits with a hand-driven clock: concurrency, the sliding minute and the exact Retry-After."""

from __future__ import annotations

import pytest

from prompt_store.tenants import TenantQuota
from server.http.errors import RateLimitedError
from server.http.metrics import Metrics
from server.http.tenant_limits import WINDOW_S, TenantLimits


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def limits(clock):
    return TenantLimits(Metrics("base"), clock)


def test_concurrency_is_counted_until_release(limits):
    quota = TenantQuota(max_concurrent=2)
    first, second = limits.acquire("a", "a", quota), limits.acquire("a", "a", quota)
    with pytest.raises(RateLimitedError, match="max_concurrent"):
        limits.acquire("a", "a", quota)
    limits.acquire("b", "b", quota).release()  # another tenant is not affected
    first.release()
    first.release()  # idempotent: one request never frees two slots
    third = limits.acquire("a", "a", quota)
    with pytest.raises(RateLimitedError):
        limits.acquire("a", "a", quota)
    second.release(), third.release()


def test_no_quota_means_no_limit(limits):
    leases = [limits.acquire(None, "anonymous", None) for _ in range(100)]
    leases += [limits.acquire("free", "free", TenantQuota()) for _ in range(100)]
    for lease in leases:
        lease.charge(10**6, "prompt")
        lease.release()


def test_tokens_per_minute_and_an_exact_retry_after(limits, clock):
    quota = TenantQuota(tokens_per_minute=100)
    lease = limits.acquire("a", "a", quota)
    lease.charge(30, "prompt")
    clock.now += 10
    lease.charge(50, "generated")
    lease.release()
    clock.now += 5
    second = limits.acquire("a", "a", quota)  # 80 < 100: admitted, and it may go over
    second.charge(40, "prompt")
    second.release()
    with pytest.raises(RateLimitedError, match="tokens_per_minute") as refused:
        limits.acquire("a", "a", quota)
    # 120 tokens: under 100 once the first 30 (charged 15 s ago) age out, 45 s from now
    assert refused.value.retry_after_s == pytest.approx(WINDOW_S - 15)
    clock.now += refused.value.retry_after_s - 0.01
    with pytest.raises(RateLimitedError):
        limits.acquire("a", "a", quota)
    clock.now += 0.02
    limits.acquire("a", "a", quota).release()


def test_idle_tenants_are_forgotten(limits, clock):
    quota = TenantQuota(tokens_per_minute=10, max_concurrent=5)
    for index in range(50):
        lease = limits.acquire(f"t{index}", f"t{index}", quota)
        lease.charge(1, "prompt")
        lease.release()
    clock.now += WINDOW_S + 1
    limits.acquire("t0", "t0", quota).release()
    for index in range(50):
        limits.forget_if_idle(f"t{index}")
    assert not limits._usage


def test_refusals_and_tokens_are_counted_in_metrics(clock):
    metrics = Metrics("base")
    limits = TenantLimits(metrics, clock)
    lease = limits.acquire("a", "a", TenantQuota(max_concurrent=1, tokens_per_minute=5))
    lease.charge(7, "prompt")
    with pytest.raises(RateLimitedError):
        limits.acquire("a", "a", TenantQuota(max_concurrent=1))
    lease.release()
    with pytest.raises(RateLimitedError):
        limits.acquire("a", "a", TenantQuota(tokens_per_minute=5))
    text = metrics.render(None, None).decode()
    assert 'promptswap_tenant_tokens_total{kind="prompt",tenant="a"} 7.0' in text
    assert 'promptswap_tenant_rate_limited_total{reason="concurrency",tenant="a"} 1.0' in text
    assert 'promptswap_tenant_rate_limited_total{reason="tokens",tenant="a"} 1.0' in text
