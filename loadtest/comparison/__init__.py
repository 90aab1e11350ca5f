"""The comparison benchmark: the same requests, the same model, five ways of serving them, one process, one run.

    python -m loadtest.comparison --help

(a) one PeftModel per request, `generate` one at a time (the pattern users start from);
(b) PEFT at its best: requests grouped by task, one batched, left-padded `generate` per group;
(c) transformers' continuous batching (`generate_batch`) on the base model, no prompts;
(d) promptswap's engine, no prompts;
(e) promptswap's engine with the task mix (half prompt tuning, half prefix tuning).
Every arm generates exactly the same number of tokens per request (EOS ignored), so tokens/s compare directly.
"""
