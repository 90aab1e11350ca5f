"""Who is asking: the one value every registry call that touches a task is made on behalf of.

Visibility is decided here and nowhere else: a caller sees the shared tasks (no owner) and its own tenant's; the
operator sees everything. What a caller may not see is, to it, exactly an unknown task.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    tenant: str | None = None  # None: anonymous, or the operator
    is_operator: bool = False
    weight: float = 1.0  # the tenant's share of the engine under contention (scheduling)
    key_id: str | None = None  # the API key the caller authenticated with, for the audit log

    def sees(self, owner: str | None) -> bool:
        return self.is_operator or owner is None or owner == self.tenant

    def manages(self, owner: str | None) -> bool:
        """May change a task with this owner (new version, activate, delete)."""
        return self.is_operator or (owner is not None and owner == self.tenant)

    @property
    def scheduling_class(self) -> str:
        """The fair scheduler's queue: one per tenant; anonymous and operator traffic share one of its own."""
        return self.tenant if self.tenant is not None else ""


ANONYMOUS = Caller()
OPERATOR = Caller(is_operator=True)
