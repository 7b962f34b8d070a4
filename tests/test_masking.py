"""Loss masks: summary_only supervises exactly the summary + EOS; full supervises every non-pad token."""

import json
import subprocess
import sys

import pytest

from runners.config import TemplateEntry
from runners.masking import IGNORE, collate, encode_example
from runners.models import MODELS, resolve_source
from runners.templates import TEMPLATES

DIALOGUE = "#Person1#: Hi Tom, can we meet on Monday?\n#Person2#: Sorry, Monday is bad. How about Friday at noon?"
SUMMARY = "Tom and #Person1# will meet on Friday at noon."


def tokenizer_for(name):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_source(MODELS[name]))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# Llama-style (adds BOS), GPT-2/Phi-style (no BOS, pad = EOS), T5 (appends </s>), and the real SmolLM2.
CASES = [(m, t) for m in ("tiny-llama", "tiny-phi", "smollm2-135m") for t in TEMPLATES if t != "t5"]
CASES = [(m, t) for m, t in CASES if not (t == "chat" and m == "tiny-phi")]  # tiny-phi has no chat template
# SmolLM2's tokenizer comes with its model, converted from GGUF on first use (half a minute): slow.
CASES = [pytest.param(m, t, marks=pytest.mark.slow) if m == "smollm2-135m" else (m, t) for m, t in CASES]


@pytest.mark.parametrize(("model", "template"), CASES)
def test_summary_only_supervises_exactly_summary_and_eos(model, template):
    tok = tokenizer_for(model)
    tpl = TEMPLATES[template]
    enc = encode_example(
        tok, tpl, DIALOGUE, SUMMARY, loss="summary_only", kind="causal", max_source_length=512, max_target_length=64
    )
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert supervised[-1] == tok.eos_token_id
    assert tok.decode(supervised[:-1]).strip() == SUMMARY
    assert all(lab == IGNORE for lab in enc.labels[: enc.prompt_len])
    assert enc.labels[enc.prompt_len :] == enc.input_ids[enc.prompt_len :]
    # The prompt ids are exactly what generation starts from.
    from runners.masking import encode_prompt

    assert encode_prompt(tok, tpl, DIALOGUE, 512)[0] == enc.input_ids[: enc.prompt_len]


@pytest.mark.parametrize(("model", "template"), CASES)
def test_full_supervises_every_token(model, template):
    tok = tokenizer_for(model)
    enc = encode_example(
        tok,
        TEMPLATES[template],
        DIALOGUE,
        SUMMARY,
        loss="full",
        kind="causal",
        max_source_length=512,
        max_target_length=64,
    )
    assert enc.labels == enc.input_ids


def test_seq2seq_labels_are_the_summary_with_eos():
    tok = tokenizer_for("tiny-t5")
    for loss in ("full", "summary_only"):
        enc = encode_example(
            tok,
            TEMPLATES["t5"],
            DIALOGUE,
            SUMMARY,
            loss=loss,
            kind="seq2seq",
            max_source_length=512,
            max_target_length=64,
        )
        assert enc.labels[-1] == tok.eos_token_id
        assert tok.decode(enc.labels[:-1]).strip() == SUMMARY
        assert enc.input_ids[-1] == tok.eos_token_id  # T5 appends </s> to the source


def test_truncation_shortens_the_dialogue_never_the_tail_or_summary():
    tok = tokenizer_for("tiny-llama")
    tpl = TEMPLATES["alpaca"]
    long_dialogue = "\n".join(f"#Person1#: line {i} about the weather and the trains." for i in range(200))
    enc = encode_example(
        tok,
        tpl,
        long_dialogue,
        SUMMARY,
        loss="summary_only",
        kind="causal",
        max_source_length=128,
        max_target_length=64,
    )
    assert enc.dialogue_truncated and enc.prompt_len <= 128
    prompt = tok.decode(enc.input_ids[: enc.prompt_len], skip_special_tokens=True)
    assert prompt.startswith("Below is an instruction") and prompt.endswith("### Output:\n")
    assert "line 0 " in prompt and "line 199" not in prompt
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert tok.decode(supervised[:-1]) == SUMMARY


def test_template_longer_than_budget_is_a_clear_error():
    from runners.contract.errors import ConfigError

    tok = tokenizer_for("tiny-llama")
    with pytest.raises(ConfigError, match="max_source_length"):
        encode_example(
            tok,
            TEMPLATES["alpaca"],
            DIALOGUE,
            SUMMARY,
            loss="full",
            kind="causal",
            max_source_length=16,
            max_target_length=64,
        )


def test_padding_is_never_a_label_even_when_pad_is_eos():
    tok = tokenizer_for("tiny-phi")  # pad id == eos id: masking by id would drop the EOS label
    assert tok.pad_token_id == tok.eos_token_id
    encs = [
        encode_example(
            tok,
            TEMPLATES["custom"],
            d,
            s,
            loss="summary_only",
            kind="causal",
            max_source_length=256,
            max_target_length=64,
        )
        for d, s in [(DIALOGUE, SUMMARY), ("A: hi\nB: bye", "They greet.")]
    ]
    batch = collate(encs, tok.pad_token_id)
    for row, enc in enumerate(encs):
        n = len(enc.input_ids)
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (batch["input_ids"].shape[1] - n)
        assert (batch["labels"][row, n:] == IGNORE).all()
        assert batch["labels"][row, n - 1] == tok.eos_token_id  # the EOS label survives padding


def test_user_template_with_prefix():
    tok = tokenizer_for("tiny-llama")
    tpl = TemplateEntry(text="Dialogue:\n{dialogue}\nTL;DR:", summary_prefix=" ")
    enc = encode_example(
        tok, tpl, DIALOGUE, SUMMARY, loss="summary_only", kind="causal", max_source_length=256, max_target_length=64
    )
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]
    assert tok.decode(supervised[:-1]) == " " + SUMMARY


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-t5"])
def test_audit_json_reports_the_exact_masks(tiny_grid, model):
    template = "t5" if model == "tiny-t5" else "alpaca"
    grid = tiny_grid(
        f"model: [{model}]\n  dataset: [synthetic]\n  template: [{template}]\n"
        "  loss: [summary_only]\n  lora_rank: [4]\n  method: [lora]"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "grid", "audit", str(grid), "-n", "5", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 5
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lines[0]["tokenizer"])
    for row in lines:
        assert set(row) >= {"id", "template", "loss", "tokenizer", "prompt", "summary", "input_ids", "labels"}
        ids = (
            row["labels"]
            if model == "tiny-t5"
            else [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab != IGNORE]
        )
        assert ids[-1] == tok.eos_token_id
        assert tok.decode(ids[:-1]).strip() == row["summary"]
