"""Bodies of the admin routes (prompt uploads and the task catalogue)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

if TYPE_CHECKING:  # prompt_store.registry_types imports torch; the HTTP layer must not
    from prompt_store.registry_types import TaskInfo, UploadResult, VersionInfo


class UploadResponse(BaseModel):
    task: str
    version: int
    peft_type: str
    kind: str  # embedding | prefix_kv
    num_virtual_tokens: int
    bytes: int  # stored size of both files
    owner: str | None  # the tenant that owns the task; None: shared
    task_kind: str  # generate | classify-sequence | classify-tokens (`kind` is how the prompt is applied)
    num_labels: int | None  # classification: rows of the head; None for generation
    labels: list[str] | None  # classification: the label names, one per row; None for generation

    @classmethod
    def of(cls, result: UploadResult) -> UploadResponse:
        return cls(
            task=result.task,
            version=result.version,
            peft_type=result.peft_type,
            kind=result.kind.value,
            num_virtual_tokens=result.num_virtual_tokens,
            bytes=result.bytes,
            owner=result.owner,
            **_task_kind_fields(result),
        )


class VersionOut(BaseModel):
    version: int
    peft_type: str
    kind: str
    num_virtual_tokens: int
    num_variants: int  # multitask sub-tasks; 1 for other types
    bytes: int
    created_at: float  # Unix time of the upload
    is_active: bool
    task_kind: str  # generate | classify-sequence | classify-tokens
    num_labels: int | None  # classification: rows of the head; None for generation
    labels: list[str] | None  # classification: the label names, one per row; None for generation

    @classmethod
    def of(cls, info: VersionInfo) -> VersionOut:
        return cls(
            version=info.version,
            peft_type=info.peft_type,
            kind=info.kind.value,
            num_virtual_tokens=info.num_virtual_tokens,
            num_variants=info.num_variants,
            bytes=info.bytes,
            created_at=info.created_at,
            is_active=info.is_active,
            **_task_kind_fields(info),
        )


class TaskOut(BaseModel):
    task: str
    active_version: int
    versions: list[VersionOut]  # ascending version numbers
    owner: str | None  # the tenant that owns the task; None: shared
    task_kind: str  # the active version's: what requests to the task are served as

    @classmethod
    def of(cls, info: TaskInfo) -> TaskOut:
        versions = [VersionOut.of(v) for v in info.versions]
        return cls(
            task=info.task,
            active_version=info.active_version,
            versions=versions,
            owner=info.owner,
            task_kind=info.active.task_kind.value,
        )


class TaskList(BaseModel):
    tasks: list[TaskOut]


class ActivateRequest(BaseModel):
    version: int = Field(ge=1)


def _task_kind_fields(info: UploadResult | VersionInfo) -> dict:
    is_classification = info.task_kind.is_classification
    return {
        "task_kind": info.task_kind.value,
        "num_labels": info.num_labels if is_classification else None,
        "labels": list(info.labels) if is_classification else None,
    }
