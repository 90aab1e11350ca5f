"""Tenants and API keys as values: what the tenant directory stores and hands out (no secrets but at creation)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

TENANT_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
RESERVED_TENANT_NAMES = frozenset({"anonymous", "other"})  # metric label values of their own
SCOPE_GENERATE = "generate"  # inference routes
SCOPE_PROMPTS_WRITE = "prompts:write"  # the admin prompt routes, for the tenant's own tasks
SCOPES = (SCOPE_GENERATE, SCOPE_PROMPTS_WRITE)
KEY_PREFIX = "ps-"


def is_valid_tenant_name(name: object) -> bool:
    return (
        isinstance(name, str) and TENANT_NAME_PATTERN.fullmatch(name) is not None and name not in RESERVED_TENANT_NAMES
    )


@dataclass(frozen=True)
class TenantQuota:
    """None: no limit."""

    max_concurrent: int | None = None  # requests running + waiting
    tokens_per_minute: int | None = None  # prompt (virtual included) + generated tokens, over a sliding minute
    max_tasks: int | None = None  # tasks owned
    max_prompt_bytes: int | None = None  # stored bytes of every version of every task owned


QUOTA_FIELDS = tuple(field.name for field in fields(TenantQuota))  # one name each in the API, the store, the CLI


@dataclass(frozen=True)
class Tenant:
    name: str
    weight: float  # share of the engine under contention; > 0
    quota: TenantQuota
    created_at: float  # time.time()


@dataclass(frozen=True)
class KeyInfo:
    """An API key's public record: everything but the secret (of which only a hash is stored)."""

    id: str  # public identifier, in listings and the audit log
    tenant: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None  # time.time(); None: never

    def is_expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True)
class NewKey:
    """A key just created: the secret is shown once, here, and never again."""

    info: KeyInfo
    secret: str  # "ps-" + at least 192 random bits, url-safe base64
