"""Turn a sequence's progress into the RequestOutput its caller receives."""

from __future__ import annotations

from server.engine.request import FinishReason, RequestOutput, RequestTimings
from server.engine.sequence import Sequence, SequenceStatus


def finish_sequence(seq: Sequence, reason: FinishReason) -> None:
    seq.status = SequenceStatus.FINISHED
    seq.finish_reason = reason


def take_output(seq: Sequence, now: float) -> RequestOutput:
    """Everything new since the last output; on the last one, the held-back text too."""
    finished = seq.is_finished
    if finished and seq.finish_reason is not FinishReason.STOP:
        seq.stop_matcher.add(seq.detokenizer.flush())
    new_ids = tuple(seq.pending_token_ids)
    seq.pending_token_ids.clear()
    timings = None
    if finished:
        timings = RequestTimings(arrival_time=seq.arrival_time, first_scheduled_time=seq.first_scheduled_time,
                                 first_token_time=seq.first_token_time, finished_time=now)
    return RequestOutput(
        request_id=seq.request_id, new_token_ids=new_ids, new_text=seq.stop_matcher.take(final=finished),
        finished=finished, finish_reason=seq.finish_reason, num_prompt_tokens=seq.num_prompt_tokens,
        num_generated_tokens=seq.num_generated,
        task=seq.task_ref.task if seq.task_ref else None,
        task_version=seq.task_ref.version if seq.task_ref else None, timings=timings)
