"""`python -m loadtest.peft_check` tells a `generate` that drops the virtual tokens from one that does not, and
the reference it checks against means what the adapter means."""

from __future__ import annotations

import torch

from loadtest.peft_check import CASES, check_types, format_report, main
from loadtest.peft_reference import eos_token_ids, greedy_uncached


def _uncached(model, prompt, max_new_tokens, **forward_kwargs):
    return greedy_uncached(model, prompt, max_new_tokens, eos_token_ids(model), **forward_kwargs).token_ids


def _without_virtual_tokens(model, prompt, max_new_tokens, **forward_kwargs):
    """The failure transformers 5.24.0 brought to `generate`: the base model alone, the soft prompt dropped."""
    base = model.get_base_model()
    return greedy_uncached(base, prompt, max_new_tokens, eos_token_ids(base)).token_ids


def test_a_decoder_that_drops_the_prompt_is_caught_for_every_type():
    results = check_types(_without_virtual_tokens, num_prompts=3, max_new_tokens=4)
    assert [r.label for r in results] == [label for label, _, _ in CASES]
    assert all(r.num_agreeing < r.num_prompts and r.first_divergence is not None for r in results)
    assert "does NOT decode" in format_report(results, 4)


def test_the_definition_agrees_with_itself_and_the_verdict_says_so():
    results = check_types(_uncached, num_prompts=2, max_new_tokens=3)
    assert all(r.num_agreeing == r.num_prompts == 2 and r.first_divergence is None for r in results)
    assert "agrees with the forward for every type" in format_report(results, 3)


def test_the_command_reports_every_type_and_exits_by_its_verdict(capsys):
    status = main(["--prompts", "2", "--new-tokens", "3"])
    report = capsys.readouterr().out
    assert all(label in report for label, _, _ in CASES) and "transformers " in report
    assert status == (0 if "agrees with the forward" in report else 1)


def test_the_reference_of_prompt_tuning_is_the_prompt_rows_before_the_input(tiny_llama_dir, adapter_factory):
    """Independent of PEFT's forward: prepend the saved rows to the input embeddings and decode greedily."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    adapter_dir = adapter_factory(tiny_llama_dir, "PROMPT_TUNING", num_virtual_tokens=5)
    rows = load_file(adapter_dir / "adapter_model.safetensors")["prompt_embeddings"]  # [5, hidden]
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    prompt = [1, 504, 3458, 282, 4649, 314]
    expected, sequence = [], list(prompt)
    with torch.no_grad():
        for _ in range(6):
            embeds = torch.cat([rows, base.get_input_embeddings()(torch.tensor(sequence))])[None]
            token = int(base(inputs_embeds=embeds).logits[0, -1].argmax())
            expected.append(token)
            sequence.append(token)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), adapter_dir).eval()
    assert _uncached(model, prompt, 6) == expected
