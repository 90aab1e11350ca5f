"""Every way a prompt file or a registry operation can fail; the HTTP layer maps these to status codes."""


class PromptStoreError(Exception):
    """Base class; the message names the problem in words a user can act on."""


class InvalidPromptError(PromptStoreError):
    """The uploaded files are malformed, unsupported or do not fit the served model (HTTP 400/422)."""


class PromptTooLargeError(InvalidPromptError):
    """A file or num_virtual_tokens exceeds a configured limit (HTTP 413)."""


class UnknownTaskError(PromptStoreError):
    """No such task, or no such version of it (HTTP 404)."""


class InvalidTaskNameError(PromptStoreError):
    """The task name breaks the naming rule or takes the base model's id (HTTP 400/422)."""


class InvalidSubtaskError(InvalidPromptError):
    """A request names a multitask sub-task the task version does not have (HTTP 400/422)."""


class StorageError(PromptStoreError):
    """The store on disk could not be written, or holds files that no longer read back (HTTP 500/507)."""


class StorageConflictError(StorageError):
    """Another writer changed the stored object since this process last read or wrote it (a shared object store's
    conditional write failed); nothing was changed."""


class ConflictError(PromptStoreError):
    """The change conflicts with what exists: a task name owned by someone else, a tenant that exists or still
    owns tasks (HTTP 409)."""


class UnknownTenantError(PromptStoreError):
    """No such tenant, or no such key of it (HTTP 404)."""


class InvalidTenantError(PromptStoreError):
    """A tenant or key field breaks its rule: name, weight, quota, scope, expiry (HTTP 422)."""


class QuotaExceededError(PromptStoreError):
    """An upload would take the tenant past `max_tasks` or `max_prompt_bytes`; the message names it (HTTP 403)."""
