"""What the registry hands to its callers (engine and HTTP layer): frozen values, no tensors except PromptSpec."""

from __future__ import annotations

from dataclasses import dataclass

from prompt_store.spec import PromptKind, TaskKind


@dataclass(frozen=True)
class TaskVersionRef:
    """A pin on one task version: valid until unpinned, whatever happens to the task meanwhile."""

    task: str
    version: int
    peft_type: str
    kind: PromptKind
    num_virtual_tokens: int
    num_variants: int  # multitask sub-tasks; 1 for other types
    subtask: int  # which variant the request uses (0 unless multitask)
    owner: str | None = None  # the task's tenant; None: a shared task
    task_kind: TaskKind = TaskKind.GENERATE  # generation or a classification kind (the version's adapter task_type)

    @property
    def key(self) -> tuple[str, int]:
        return (self.task, self.version)


@dataclass(frozen=True)
class UploadResult:
    task: str
    version: int
    created: bool  # True when the upload created the task (HTTP 201), False for a new version (200)
    peft_type: str
    kind: PromptKind
    num_virtual_tokens: int
    bytes: int  # stored size: adapter_config.json + adapter_model.safetensors
    owner: str | None = None  # the task's tenant; None: shared
    task_kind: TaskKind = TaskKind.GENERATE  # generation or a classification kind (the adapter's task_type)
    num_labels: int = 0  # rows of the classifier head; 0 for generation
    labels: tuple[str, ...] = ()  # the head's label names, one per row; () for generation


@dataclass(frozen=True)
class VersionInfo:
    version: int
    peft_type: str
    kind: PromptKind
    num_virtual_tokens: int
    num_variants: int
    bytes: int  # stored size of the version's two files
    created_at: float  # time.time() of the upload
    is_active: bool
    task_kind: TaskKind = TaskKind.GENERATE  # generation or a classification kind (the adapter's task_type)
    num_labels: int = 0  # rows of the classifier head; 0 for generation
    labels: tuple[str, ...] = ()  # the head's label names, one per row; () for generation


@dataclass(frozen=True)
class TaskInfo:
    task: str
    active_version: int
    versions: tuple[VersionInfo, ...]  # ascending version numbers
    owner: str | None = None  # the task's tenant; None: shared

    @property
    def active(self) -> VersionInfo:
        return next(info for info in self.versions if info.is_active)


@dataclass(frozen=True)
class RegistryStats:
    """A snapshot for metrics (registry_tasks, registry_resident_tasks, registry_loads_total, ...)."""

    num_tasks: int
    num_host_cached: int  # task versions whose parsed tensors are in host memory
    num_pinned_versions: int  # task versions held by at least one ref
    loads_by_tier: dict[str, int]  # "host": served from the host cache, "disk": read and parsed from the store
    uploads_accepted: int
    uploads_rejected: int  # invalid name or files (4xx)
    uploads_failed: int  # valid upload the store could not write (5xx)
    evictions: int  # host cache evictions
    num_damaged_entries: int = 0  # store entries load() skipped as damaged or unfit (each also logged)


@dataclass(frozen=True)
class OwnerUsage:
    """What a tenant's tasks take, against its `max_tasks` and `max_prompt_bytes`."""

    num_tasks: int
    num_bytes: int  # every kept version of every task it owns
