"""A task's manifest: the one file that says which versions exist and which is active.

Replacing a task's manifest is the commit point of every change to the task (upload, activate, prune), so the
manifest carries each version's metadata and a scan reads one small file per task and never a tensor.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from prompt_store.model_shape import ModelShape
from prompt_store.spec import PromptKind, PromptSpec, TaskKind
from prompt_store.tenants import is_valid_tenant_name

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class VersionRecord:
    """What the store knows about one version without reading its tensors."""

    version: int  # 1, 2, ... per task; never reused while the process lives
    peft_type: str
    kind: PromptKind
    num_virtual_tokens: int
    num_variants: int  # multitask sub-tasks (1 for other types)
    prompt_shape: tuple[int, ...]  # shape of the normalized PromptSpec tensor
    config_bytes: int  # size of adapter_config.json
    model_bytes: int  # size of adapter_model.safetensors
    config_sha256: str
    model_sha256: str
    created_at: float  # time.time() of the upload
    # Manifests written before classification tasks existed leave these out: they read as generation tasks.
    task_kind: TaskKind = TaskKind.GENERATE
    head_shape: tuple[int, ...] | None = None  # the classifier head's weight, [num_labels, hidden]; None: generation
    labels: tuple[str, ...] = ()  # one per head row (classification only), so listings need not read the config

    @property
    def num_labels(self) -> int:
        return 0 if self.head_shape is None else self.head_shape[0]

    @property
    def num_bytes(self) -> int:
        return self.config_bytes + self.model_bytes

    def fits(self, shape: ModelShape) -> bool:
        """Whether this prompt still fits the served model (the store may outlive a model change)."""
        if self.head_shape is not None and self.head_shape[1] != shape.hidden_size:
            return False
        if self.kind is PromptKind.EMBEDDING:
            return self.prompt_shape[-1] == shape.hidden_size
        _, num_layers, _, _, num_heads, head_dim = self.prompt_shape
        return (num_layers, num_heads, head_dim) == (shape.num_layers, shape.num_kv_heads, shape.head_dim)

    def matches(self, spec: PromptSpec) -> bool:
        head_shape = None if spec.head is None else tuple(spec.head.weight.shape)
        labels = () if spec.head is None else spec.head.labels
        found = (spec.peft_type, spec.kind, tuple(spec.tensor.shape), spec.task_kind, head_shape, labels)
        return found == (self.peft_type, self.kind, self.prompt_shape, self.task_kind, self.head_shape, self.labels)


@dataclass(frozen=True)
class TaskManifest:
    task: str
    active_version: int
    versions: tuple[VersionRecord, ...]  # ascending version numbers; the active one among them
    owner: str | None = None  # the tenant that owns the task; None: shared (uploaded with the operator token)

    def version(self, number: int) -> VersionRecord | None:
        return next((record for record in self.versions if record.version == number), None)

    @property
    def active(self) -> VersionRecord:
        record = self.version(self.active_version)
        assert record is not None, f"active version {self.active_version} is not among the versions"  # from_json
        return record

    @property
    def num_bytes(self) -> int:
        """Stored bytes of every version kept (what a tenant's `max_prompt_bytes` counts)."""
        return sum(record.num_bytes for record in self.versions)

    @property
    def latest_version(self) -> int:
        return self.versions[-1].version

    def with_version(self, record: VersionRecord) -> TaskManifest:
        """The new version added and made active."""
        return replace(self, active_version=record.version, versions=(*self.versions, record))

    def without_versions(self, numbers: set[int]) -> TaskManifest:
        return replace(self, versions=tuple(r for r in self.versions if r.version not in numbers))

    def to_json(self) -> bytes:
        body = {
            "format": MANIFEST_FORMAT,
            "task": self.task,
            "active_version": self.active_version,
            "versions": [record_to_dict(record) for record in self.versions],
        }
        if self.owner is not None:  # absent for shared tasks, as in manifests written before tenants existed
            body["owner"] = self.owner
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> TaskManifest:
        """Raises ValueError (or KeyError/TypeError) describing the first flaw; callers report it."""
        body = json.loads(data)
        if body.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"unknown manifest format {body.get('format')!r}")
        versions = tuple(sorted((_record_from_dict(item) for item in body["versions"]), key=lambda r: r.version))
        owner = body.get("owner")
        if owner is not None and not is_valid_tenant_name(owner):
            raise ValueError(f"invalid owner {str(owner)[:40]!r}")
        manifest = cls(_require_type(body["task"], str), _require_type(body["active_version"], int), versions, owner)
        if manifest.version(manifest.active_version) is None:
            raise ValueError(f"active version {manifest.active_version} is not among the versions")
        if len({r.version for r in versions}) != len(versions):
            raise ValueError("a version number appears twice")
        return manifest


def record_to_dict(record: VersionRecord) -> dict:
    body = asdict(record)
    body["kind"] = record.kind.value
    body["prompt_shape"] = list(record.prompt_shape)
    body["task_kind"] = record.task_kind.value
    body["head_shape"] = None if record.head_shape is None else list(record.head_shape)
    body["labels"] = list(record.labels)
    return body


def _record_from_dict(body: dict) -> VersionRecord:
    record = VersionRecord(
        version=_require_type(body["version"], int),
        peft_type=_require_type(body["peft_type"], str),
        kind=PromptKind(body["kind"]),
        num_virtual_tokens=_require_type(body["num_virtual_tokens"], int),
        num_variants=_require_type(body["num_variants"], int),
        prompt_shape=tuple(_require_type(size, int) for size in body["prompt_shape"]),
        config_bytes=_require_type(body["config_bytes"], int),
        model_bytes=_require_type(body["model_bytes"], int),
        config_sha256=_require_type(body["config_sha256"], str),
        model_sha256=_require_type(body["model_sha256"], str),
        created_at=float(body["created_at"]),
        task_kind=TaskKind(body.get("task_kind", TaskKind.GENERATE.value)),
        head_shape=_head_shape(body.get("head_shape")),
        labels=tuple(_require_type(label, str) for label in _require_type(body.get("labels", []), list)),
    )
    expected_rank = 3 if record.kind is PromptKind.EMBEDDING else 6
    if record.version < 1 or len(record.prompt_shape) != expected_rank or not _head_agrees(record):
        raise ValueError(f"version {record.version} has an invalid record")
    return record


def _head_shape(value) -> tuple[int, ...] | None:
    return None if value is None else tuple(_require_type(size, int) for size in value)


def _head_agrees(record: VersionRecord) -> bool:
    """A classification version has a [num_labels, hidden] head and a label per row; a generation one neither."""
    if not record.task_kind.is_classification:
        return record.head_shape is None and not record.labels
    return record.head_shape is not None and len(record.head_shape) == 2 and len(record.labels) == record.num_labels


def _require_type(value, kind: type):
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value
