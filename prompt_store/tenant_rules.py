"""The rules a tenant's and a key's fields obey, checked on every change and on every load of the directory.

Each check raises InvalidTenantError whose message names the field and stays short; none ever echoes a secret.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from prompt_store.errors import InvalidTenantError
from prompt_store.tenants import QUOTA_FIELDS, RESERVED_TENANT_NAMES, SCOPES, TENANT_NAME_PATTERN, TenantQuota

MAX_WEIGHT = 1000.0
# Quotas stay within a signed 64-bit integer: any JSON reader can hold them, and a huge Python int cannot make
# json.dumps fail (int-to-str conversion is limited to 4300 digits).
MAX_QUOTA = 2**63 - 1


def as_finite_float(value: object) -> float | None:
    """`value` as a float if it is a finite int or float, else None. Never a bool: True would read as 1."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int beyond the float range
        return None
    return number if math.isfinite(number) else None


def check_tenant_name(name: object) -> str:
    # fullmatch, not match with "$": "$" also matches before a trailing newline
    if not isinstance(name, str) or TENANT_NAME_PATTERN.fullmatch(name) is None:
        raise InvalidTenantError("name: use 1 to 32 characters from a-z 0-9 -, starting with a letter or digit")
    if name in RESERVED_TENANT_NAMES:
        raise InvalidTenantError(f"name: {name!r} is reserved")
    return name


def check_weight(weight: object) -> float:
    number = as_finite_float(weight)
    if number is None or not 0 < number <= MAX_WEIGHT:
        raise InvalidTenantError(f"weight: must be a number above 0 and at most {MAX_WEIGHT:g}")
    return number


def check_quota_value(field: str, value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 < value <= MAX_QUOTA:
        raise InvalidTenantError(f"{field}: must be a positive integer, or null for no limit")
    return value


def check_quota(quota: object) -> TenantQuota:
    if not isinstance(quota, TenantQuota):
        raise InvalidTenantError("quota: must be a TenantQuota")
    for field in QUOTA_FIELDS:
        check_quota_value(field, getattr(quota, field))
    return quota


def check_scopes(scopes: object) -> tuple[str, ...]:
    """A non-empty list of distinct known scopes, returned in SCOPES order (a set of permissions, not a sequence)."""
    if isinstance(scopes, str) or not isinstance(scopes, Sequence) or not scopes:
        raise InvalidTenantError(f"scopes: must be a non-empty list of {', '.join(SCOPES)}")
    if not all(isinstance(scope, str) and scope in SCOPES for scope in scopes):
        raise InvalidTenantError(f"scopes: unknown scope; use {', '.join(SCOPES)}")
    if len(set(scopes)) != len(scopes):
        raise InvalidTenantError("scopes: a scope appears twice")
    return tuple(scope for scope in SCOPES if scope in scopes)


def check_expiry(expires_at: object, now: float) -> float | None:
    if expires_at is None:
        return None
    number = as_finite_float(expires_at)
    if number is None or number <= now:
        raise InvalidTenantError("expires_at: must be null or a time (seconds since the epoch) in the future")
    return number
