"""Bodies of the operator's tenant and key routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from prompt_store.tenants import QUOTA_FIELDS

if TYPE_CHECKING:
    from prompt_store.registry_types import OwnerUsage
    from prompt_store.tenants import KeyInfo, NewKey, Tenant


class TenantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt quota must not silently mean "no limit"

    name: str
    weight: float = 1.0
    max_concurrent: int | None = None
    tokens_per_minute: int | None = None
    max_tasks: int | None = None
    max_prompt_bytes: int | None = None

    def quota_fields(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in QUOTA_FIELDS}


class TenantPatch(BaseModel):
    """Only the fields sent change; a quota sent as null is lifted."""

    model_config = ConfigDict(extra="forbid")

    weight: float | None = None
    max_concurrent: int | None = None
    tokens_per_minute: int | None = None
    max_tasks: int | None = None
    max_prompt_bytes: int | None = None

    def changes(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class TenantOut(BaseModel):
    name: str
    weight: float
    max_concurrent: int | None
    tokens_per_minute: int | None
    max_tasks: int | None
    max_prompt_bytes: int | None
    created_at: float  # Unix time
    num_tasks: int  # tasks it owns now
    prompt_bytes: int  # stored bytes of their kept versions (what max_prompt_bytes counts)

    @classmethod
    def of(cls, tenant: Tenant, usage: OwnerUsage) -> TenantOut:
        quota = tenant.quota
        return cls(
            name=tenant.name,
            weight=tenant.weight,
            max_concurrent=quota.max_concurrent,
            tokens_per_minute=quota.tokens_per_minute,
            max_tasks=quota.max_tasks,
            max_prompt_bytes=quota.max_prompt_bytes,
            created_at=tenant.created_at,
            num_tasks=usage.num_tasks,
            prompt_bytes=usage.num_bytes,
        )


class TenantList(BaseModel):
    tenants: list[TenantOut]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scopes: list[str] = ["generate"]
    expires_at: float | None = None  # Unix time; null: never


class KeyOut(BaseModel):
    id: str
    tenant: str
    scopes: list[str]
    created_at: float
    expires_at: float | None

    @classmethod
    def of(cls, info: KeyInfo) -> KeyOut:
        return cls(
            id=info.id,
            tenant=info.tenant,
            scopes=list(info.scopes),
            created_at=info.created_at,
            expires_at=info.expires_at,
        )


class KeyCreated(KeyOut):
    key: str  # the secret: shown in this response only

    @classmethod
    def of_new(cls, new_key: NewKey) -> KeyCreated:
        return cls(key=new_key.secret, **KeyOut.of(new_key.info).model_dump())


class KeyList(BaseModel):
    keys: list[KeyOut]
