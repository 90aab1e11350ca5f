"""The tenant directory's whole content as one value, and its form in tenants.json.

    {"format": 1,
     "tenants": [{"name", "weight", "max_concurrent", "tokens_per_minute", "max_tasks", "max_prompt_bytes",
                  "created_at"}, ...],                                           sorted by name
     "keys": [{"id", "tenant", "scopes", "created_at", "expires_at", "secret_sha256"}, ...]}   sorted by id

A document is immutable: every change builds a new one, which is written whole before it replaces the old.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

from prompt_store.errors import InvalidTenantError
from prompt_store.tenant_rules import (
    as_finite_float,
    check_quota_value,
    check_scopes,
    check_tenant_name,
    check_weight,
)
from prompt_store.tenants import QUOTA_FIELDS, KeyInfo, Tenant, TenantQuota

TENANTS_FORMAT = 1
KEY_ID_PATTERN = re.compile(r"key-[0-9a-f]{16}")
SHA256_HEX_PATTERN = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class StoredKey:
    """A key as the directory keeps it: the public record and the SHA-256 of the secret, never the secret."""

    info: KeyInfo
    secret_sha256: str  # lowercase hex


@dataclass(frozen=True)
class TenantDocument:
    tenants: Mapping[str, Tenant] = field(default_factory=dict)  # name -> tenant
    keys: Mapping[str, StoredKey] = field(default_factory=dict)  # key id -> key; each key's tenant is in `tenants`
    keys_by_hash: Mapping[str, StoredKey] = field(init=False, repr=False, compare=False)  # secret_sha256 -> key

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys_by_hash", {key.secret_sha256: key for key in self.keys.values()})

    def with_tenant(self, tenant: Tenant) -> TenantDocument:
        """The tenant added, or replacing the one of its name."""
        return replace(self, tenants={**self.tenants, tenant.name: tenant})

    def without_tenant(self, name: str) -> TenantDocument:
        """The tenant and all its keys removed."""
        tenants = {n: t for n, t in self.tenants.items() if n != name}
        return TenantDocument(tenants, {i: k for i, k in self.keys.items() if k.info.tenant != name})

    def with_key(self, key: StoredKey) -> TenantDocument:
        return replace(self, keys={**self.keys, key.info.id: key})

    def without_key(self, key_id: str) -> TenantDocument:
        return replace(self, keys={i: k for i, k in self.keys.items() if i != key_id})

    def to_json(self) -> bytes:
        body = {
            "format": TENANTS_FORMAT,
            "tenants": [_tenant_to_dict(self.tenants[name]) for name in sorted(self.tenants)],
            "keys": [_key_to_dict(self.keys[key_id]) for key_id in sorted(self.keys)],
        }
        return json.dumps(body, indent=1, allow_nan=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TenantDocument:
        """Raises ValueError naming the first flaw. Every field is checked as strictly as a change would be."""
        try:
            body = json.loads(data, parse_constant=_refuse_constant)
            if not isinstance(body, dict) or body.get("format") != TENANTS_FORMAT:
                raise ValueError(f"not a tenant directory of format {TENANTS_FORMAT}")
            tenants: dict[str, Tenant] = {}
            for index, item in enumerate(_list(body, "tenants")):
                tenant = _tenant_from_dict(_Fields(item, f"tenants[{index}]"))
                if tenant.name in tenants:
                    raise ValueError(f"tenant {tenant.name!r} appears twice")
                tenants[tenant.name] = tenant
            keys: dict[str, StoredKey] = {}
            for index, item in enumerate(_list(body, "keys")):
                key = _key_from_dict(_Fields(item, f"keys[{index}]"), tenants)
                if key.info.id in keys:
                    raise ValueError(f"key {key.info.id!r} appears twice")
                keys[key.info.id] = key
        except InvalidTenantError as exc:  # a field that breaks its rule
            raise ValueError(str(exc)) from None
        document = cls(tenants, keys)
        if len(document.keys_by_hash) != len(keys):
            raise ValueError("two keys have the same secret_sha256")
        return document


def _tenant_to_dict(tenant: Tenant) -> dict:
    return {"name": tenant.name, "weight": tenant.weight, **asdict(tenant.quota), "created_at": tenant.created_at}


def _key_to_dict(key: StoredKey) -> dict:
    info = key.info
    return {
        "id": info.id,
        "tenant": info.tenant,
        "scopes": list(info.scopes),
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "secret_sha256": key.secret_sha256,
    }


def _tenant_from_dict(fields: _Fields) -> Tenant:
    name = check_tenant_name(fields.get("name"))
    quota = TenantQuota(**{q: check_quota_value(q, fields.get(q)) for q in QUOTA_FIELDS})
    return Tenant(name, check_weight(fields.get("weight")), quota, fields.time("created_at"))


def _key_from_dict(fields: _Fields, tenants: Mapping[str, Tenant]) -> StoredKey:
    key_id, tenant, digest = fields.get("id"), fields.get("tenant"), fields.get("secret_sha256")
    if not isinstance(key_id, str) or KEY_ID_PATTERN.fullmatch(key_id) is None:
        raise ValueError(f"{fields.where}.id is not a key id")
    if not isinstance(tenant, str) or tenant not in tenants:
        raise ValueError(f"{fields.where}.tenant is not a tenant in the document")
    if not isinstance(digest, str) or SHA256_HEX_PATTERN.fullmatch(digest) is None:
        raise ValueError(f"{fields.where}.secret_sha256 is not a SHA-256 in hex")
    expires_at = None if fields.get("expires_at") is None else fields.time("expires_at")
    scopes = check_scopes(fields.get("scopes"))
    return StoredKey(KeyInfo(key_id, tenant, scopes, fields.time("created_at"), expires_at), digest)


class _Fields:
    """A JSON object's fields, read with errors that say where in the document the flaw is."""

    def __init__(self, body: object, where: str):
        if not isinstance(body, dict):
            raise ValueError(f"{where} is not an object")
        self.body, self.where = body, where

    def get(self, name: str) -> object:
        if name not in self.body:
            raise ValueError(f"{self.where} has no {name!r}")
        return self.body.get(name)

    def time(self, name: str) -> float:
        number = as_finite_float(self.get(name))
        if number is None:
            raise ValueError(f"{self.where}.{name} is not a time")
        return number


def _list(body: dict, name: str) -> list:
    value = body.get(name)
    if not isinstance(value, list):
        raise ValueError(f"{name!r} is not a list")
    return value


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not a valid JSON number")
