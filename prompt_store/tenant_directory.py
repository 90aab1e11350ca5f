"""The durable directory of tenants and their API keys: a change is on disk before anyone can see it."""

from __future__ import annotations

import hashlib
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol, TypeVar

from prompt_store.conflicts import retry_on_conflict
from prompt_store.documents import TENANTS_DOCUMENT
from prompt_store.errors import ConflictError, InvalidTenantError, StorageError, UnknownTenantError
from prompt_store.tenant_document import StoredKey, TenantDocument
from prompt_store.tenant_rules import (
    check_expiry,
    check_quota,
    check_quota_value,
    check_scopes,
    check_tenant_name,
    check_weight,
)
from prompt_store.tenants import KEY_PREFIX, QUOTA_FIELDS, TENANT_NAME_PATTERN, KeyInfo, NewKey, Tenant, TenantQuota

UPDATABLE_FIELDS = ("weight", *QUOTA_FIELDS)  # what update_tenant (PATCH) may change
SECRET_BYTES = 32  # 256 random bits per key; the API promises at least 192
MAX_SECRET_CHARS = 200  # anything longer is not a key of ours, and is not worth hashing
NO_QUOTA = TenantQuota()  # every limit lifted
FIELD_NAME_SHAPE = re.compile(r"[a-z_]{1,32}")
_T = TypeVar("_T")


class DocumentStorage(Protocol):
    """The part of a store the directory needs (PromptStorage, MemoryStorage; later an object store)."""

    def read_document(self, name: str) -> bytes | None: ...

    def write_document(self, name: str, data: bytes) -> None: ...


class TenantDirectory:
    """Tenants and their API keys, kept whole in one document of the store (tenants.json).

    Changes are serialized by one lock. Each builds the new document, writes it whole and durably, and only then
    publishes it, so a failed write changes nothing and an acknowledged change survives kill -9. On a shared store
    (S3) a write another process beat is redone, checks included, on the document as re-read. Readers use the
    published document without the lock (it is never mutated): `authenticate`, on every request, never waits for
    an admin change's fsync.
    """

    def __init__(self, storage: DocumentStorage):
        self._storage = storage
        self._lock = threading.Lock()
        self._document = TenantDocument()
        self._is_loaded = False  # no change is written before the document on disk has been read

    def load(self) -> None:
        """Read the directory from the store (none yet: empty); again whenever another process changed it. A
        damaged document raises StorageError and leaves the directory as it was."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        data = self._storage.read_document(TENANTS_DOCUMENT)
        try:
            document = TenantDocument() if data is None else TenantDocument.from_json(data)
        except ValueError as exc:
            # Starting empty would drop every tenant and key at the next write: refuse, and leave the file alone.
            raise StorageError(
                f"{TENANTS_DOCUMENT} is damaged ({str(exc)[:160]}); the server refuses to start rather than "
                "overwrite it: restore it from a backup or repair it"
            ) from None
        self._document, self._is_loaded = document, True

    # ---- tenants -------------------------------------------------------------------------------------------
    def create_tenant(self, name: str, weight: float = 1.0, quota: TenantQuota = NO_QUOTA) -> Tenant:
        tenant = Tenant(check_tenant_name(name), check_weight(weight), check_quota(quota), time.time())

        def build(document: TenantDocument) -> tuple[TenantDocument, Tenant]:
            if name in document.tenants:
                raise ConflictError(f"tenant {name!r} exists")
            return document.with_tenant(tenant), tenant

        return self._change(build)

    def update_tenant(self, name: str, changes: dict[str, object]) -> Tenant:
        """PATCH: only the fields named change; a quota set to None is lifted."""
        weight, quota_changes = _checked_changes(changes)

        def build(document: TenantDocument) -> tuple[TenantDocument | None, Tenant]:
            current = _tenant_in(document, name)
            updated = replace(
                current,
                weight=current.weight if weight is None else weight,
                quota=replace(current.quota, **quota_changes),
            )
            return (None if updated == current else document.with_tenant(updated)), updated

        return self._change(build)

    def delete_tenant(self, name: str) -> None:
        """Removes the tenant and its keys. Whether it still owns tasks is the caller's to check first."""

        def build(document: TenantDocument) -> tuple[TenantDocument, None]:
            _tenant_in(document, name)
            return document.without_tenant(name), None

        self._change(build)

    def get_tenant(self, name: str) -> Tenant:
        return _tenant_in(self._document, name)

    def list_tenants(self) -> list[Tenant]:
        tenants = self._document.tenants
        return [tenants[name] for name in sorted(tenants)]

    # ---- keys ----------------------------------------------------------------------------------------------
    def create_key(
        self, tenant: str, scopes: Sequence[str], expires_at: float | None = None, now: float | None = None
    ) -> NewKey:
        """A new key; its secret is in the result and nowhere else (only its SHA-256 is stored)."""
        now = time.time() if now is None else now
        checked_scopes, checked_expiry = check_scopes(scopes), check_expiry(expires_at, now)
        secret = KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)

        def build(document: TenantDocument) -> tuple[TenantDocument, KeyInfo]:
            _tenant_in(document, tenant)
            info = KeyInfo(_new_key_id(document), tenant, checked_scopes, now, checked_expiry)
            return document.with_key(StoredKey(info, secret_sha256(secret))), info

        return NewKey(self._change(build), secret)

    def list_keys(self, tenant: str) -> list[KeyInfo]:
        """The tenant's keys, oldest first; expired ones included (they are revoked explicitly)."""
        document = self._document
        _tenant_in(document, tenant)
        keys = [key.info for key in document.keys.values() if key.info.tenant == tenant]
        return sorted(keys, key=lambda info: (info.created_at, info.id))

    def revoke_key(self, tenant: str, key_id: str) -> None:
        """The key stops authenticating once this returns. Another tenant's key is, to this one, no such key."""

        def build(document: TenantDocument) -> tuple[TenantDocument, None]:
            _tenant_in(document, tenant)
            key = document.keys.get(key_id)
            if key is None or key.info.tenant != tenant:
                raise UnknownTenantError(f"tenant {tenant!r} has no such key")  # the id is not echoed: a secret?
            return document.without_key(key_id), None

        self._change(build)

    def authenticate(self, secret: str, now: float | None = None) -> KeyInfo | None:
        """The live key `secret` is, or None: not ours, unknown, expired, revoked, or its tenant deleted."""
        is_plausible = (
            isinstance(secret, str)
            and len(secret) <= MAX_SECRET_CHARS
            and secret.startswith(KEY_PREFIX)
            and secret.isascii()
        )
        if not is_plausible:
            return None
        document = self._document  # one published snapshot for the whole check
        # Looking up the hash leaks nothing through timing: learning a hash's prefix tells nothing of a secret.
        key = document.keys_by_hash.get(secret_sha256(secret))
        now = time.time() if now is None else now
        if key is None or key.info.is_expired(now) or key.info.tenant not in document.tenants:
            return None
        return key.info

    # ---- helpers -------------------------------------------------------------------------------------------
    def _change(self, build: Callable[[TenantDocument], tuple[TenantDocument | None, _T]]) -> _T:
        """Build the new document from the published one (None: nothing changes), write it whole, then publish
        it. A write another process beat (a shared store) is redone on the document as the store holds it now."""
        if not self._is_loaded:  # a bug in the caller; a write now would replace a document nobody has read
            raise RuntimeError("TenantDirectory.load() must succeed before any change")

        def attempt() -> _T:
            document, result = build(self._document)
            if document is not None:
                self._storage.write_document(TENANTS_DOCUMENT, document.to_json())
                self._document = document
            return result

        with self._lock:
            return retry_on_conflict(attempt, self._load_locked)


def _new_key_id(document: TenantDocument) -> str:
    while True:  # 64 random bits: a repeat is all but impossible, but an id must name one key
        key_id = f"key-{secrets.token_hex(8)}"
        if key_id not in document.keys:
            return key_id


def secret_sha256(secret: str) -> str:
    # A plain SHA-256, not a slow password hash: a key carries 256 random bits, so no guess can be tested against a
    # leaked hash in any useful time, and authenticating every request stays one fast hash and one dict lookup.
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _tenant_in(document: TenantDocument, name: str) -> Tenant:
    tenant = document.tenants.get(name)
    if tenant is None:
        # only a well-formed name is echoed: a caller may paste a secret into the wrong field
        shown = repr(name) if isinstance(name, str) and TENANT_NAME_PATTERN.fullmatch(name) else "of that name"
        raise UnknownTenantError(f"no tenant {shown}")
    return tenant


def _checked_changes(changes: dict[str, object]) -> tuple[float | None, dict[str, int | None]]:
    """(the new weight or None, {quota field: new value}) from a PATCH body, every field checked."""
    unknown = [field for field in changes if field not in UPDATABLE_FIELDS]
    if unknown:
        # a typo is named; anything not shaped like a field name may be a pasted secret, and is not echoed
        shown = repr(unknown[0]) if FIELD_NAME_SHAPE.fullmatch(unknown[0]) else "a field"
        raise InvalidTenantError(f"{shown}: not a tenant field; use {', '.join(UPDATABLE_FIELDS)}")
    weight = check_weight(changes["weight"]) if "weight" in changes else None
    quota_changes = {field: check_quota_value(field, changes[field]) for field in QUOTA_FIELDS if field in changes}
    return weight, quota_changes
