"""A test hook: make the engine fail on purpose, where real bugs would, to prove that failures stay local.

Off unless `PROMPTSWAP_FAULT_INJECTION` is set to `STAGE:MARKER`. A request whose prompt text starts with
MARKER then trips it whenever its chunk is in a batch:
- `run`: the model run raises, as a kernel or modeling bug on that request's input would (isolated: that request
  fails with a 500, the others of the step go on);
- `loop`: the step loop itself raises, outside the isolation, as a scheduler bug would (the engine cannot
  trust its state any more: the process exits non-zero so that a supervisor restarts it).
"""

from __future__ import annotations

from dataclasses import dataclass

from server.engine.batch import SchedulerOutput

STAGES = ("run", "loop")


class InjectedFault(RuntimeError):
    """Raised on purpose by the fault-injection hook."""


@dataclass(frozen=True)
class FaultInjector:
    stage: str  # one of STAGES
    marker_token_ids: tuple[int, ...]  # the marker text's tokens, without special tokens

    @classmethod
    def parse(cls, setting: str | None, tokenizer) -> FaultInjector | None:
        if not setting:
            return None
        stage, _, marker = setting.partition(":")
        if stage not in STAGES or not marker:
            raise ValueError(f"fault injection must be STAGE:MARKER with STAGE in {STAGES}, got {setting!r}")
        return cls(stage, tuple(tokenizer(marker, add_special_tokens=False).input_ids))

    def check(self, stage: str, batch: SchedulerOutput) -> None:
        if stage != self.stage:
            return
        for seq in batch.seqs:
            if self._is_marked(seq.request.prompt_token_ids):
                raise InjectedFault(f"fault injected at {stage} for request {seq.request_id}")

    def _is_marked(self, prompt_token_ids: tuple[int, ...]) -> bool:
        n = len(self.marker_token_ids)
        # The tokenizer may have put a BOS token first.
        return self.marker_token_ids in (prompt_token_ids[:n], prompt_token_ids[1 : n + 1])
