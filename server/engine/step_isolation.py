"""After a step's run or sample raised: find whose fault it was, so that only those requests fail.

Each chunk of the failed batch runs again alone, in packing order (a prompt's materialization before the
chunks that read it). Re-running is safe because nothing was applied: the failed step advanced no counter, and a
chunk rewrites the same cache slots. A chunk that fails alone fails its request (or, for a materialization,
every request of that prompt); the others form the batch that is postprocessed as if the step had gone well.
A request therefore fails at its first fault, never loops; and a failure that needs two requests together is
nobody's alone, so everyone is served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from server.engine.batch import MaterializationChunk, SchedulerOutput, SequenceChunk
from server.engine.request import TokenLogprob
from server.engine.sampler import SampleResult

log = logging.getLogger("promptswap.engine")

# runs a batch and samples: one token per `batch.sampled_seqs`
Forward = Callable[[SchedulerOutput], SampleResult]


@dataclass
class IsolatedStep:
    batch: SchedulerOutput  # the chunks that ran alone without a fault, to postprocess
    sampled_token_ids: list[int]  # one per `batch.sampled_seqs`
    sampled_logprobs: list[TokenLogprob | None]  # one per `batch.sampled_seqs`: where it asked for logprobs
    failed_chunks: list[tuple[SequenceChunk | MaterializationChunk, str]] = field(default_factory=list)  # + why


def isolate(batch: SchedulerOutput, forward: Forward) -> IsolatedStep:
    result = IsolatedStep(SchedulerOutput(preempted=batch.preempted), [], [])
    broken_entries = []  # prompts whose materialization failed: their readers in this batch cannot run
    for chunk in batch.chunks:
        if isinstance(chunk, SequenceChunk) and chunk.seq.prompt_entry in broken_entries:
            continue  # failed with its prompt (Scheduler.abandon)
        try:
            sampled = forward(SchedulerOutput(chunks=[chunk]))
        except Exception as exc:
            log.exception("a chunk failed alone: %s", _describe(chunk))
            result.failed_chunks.append((chunk, _message(chunk, exc)))
            if isinstance(chunk, MaterializationChunk):
                broken_entries.append(chunk.entry)
            continue
        result.batch.chunks.append(chunk)
        result.sampled_token_ids += sampled.token_ids
        result.sampled_logprobs += sampled.logprobs
    return result


def _describe(chunk: SequenceChunk | MaterializationChunk) -> str:
    if isinstance(chunk, MaterializationChunk):
        return f"materialization of prompt {chunk.entry.key}"
    return f"request {chunk.seq.request_id}"


def _message(chunk: SequenceChunk | MaterializationChunk, exc: Exception) -> str:
    """For the client: what failed, not the internals (those are in the server log)."""
    what = "computing its soft prompt's K/V" if isinstance(chunk, MaterializationChunk) else "running it"
    return f"the engine failed while {what} ({type(exc).__name__}); other requests were not affected"
