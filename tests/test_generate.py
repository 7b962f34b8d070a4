"""Generation: ftgrid's own greedy loop gives exactly the token ids of `model.generate` one prompt at a time,
with prompts of different lengths whose rows end at different steps; batches respect the token budget; and
anything the loop cannot reproduce goes to `model.generate`."""

import copy
import json

import pytest
import torch
from conftest import SHARED_DATA

from runners import generate as gen
from runners.config import DatasetEntry, TrialConfig
from runners.masking import Encoded, encode_prompts
from runners.models import MODELS, resolve_source

TEXTS = [
    "A: hi",
    "A: can we meet at noon on Friday?\nB: yes, at the cafe near the station.",
    "A: the printer is broken again\nB: I will fix it on Monday\nA: thanks, the report is due Tuesday.",
    "A: did you book the flight?\nB: not yet",
    "A: how was the trip to the mountains last week with your whole family and the dog?\nB: great, but cold.",
]


def load(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_source(MODELS[name])
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, tok


def one_at_a_time(model, prompts: list[list[int]], max_new: int, eos: list[int], pad: int) -> list[list[int]]:
    """The reference: `model.generate` on each prompt alone, greedy, cut after the first EOS."""
    out = []
    for ids in prompts:
        x = torch.tensor([ids])
        with torch.no_grad():
            row = model.generate(
                input_ids=x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new,
                do_sample=False,
                num_beams=1,
                eos_token_id=eos,
                pad_token_id=pad,
                temperature=None,
                top_p=None,
                top_k=None,
            )[0, x.shape[1] :].tolist()
        out.append(row[: gen._length_to_eos(row, eos, pad)])
    return out


def stop_tokens_at_different_steps(reference: list[list[int]]) -> list[int]:
    """Tokens that, taken as EOS, end the reference rows at different steps (random models rarely emit EOS):
    from each of the first rows, the token whose first occurrence is nearest to a different step, unless it
    would end every row at the same step."""

    def lengths(stop: list[int]) -> set[int]:
        return {next((k + 1 for k, t in enumerate(row) if t in stop), len(row)) for row in reference}

    picks = []
    for row, step in zip(reference, (2, 5, 8), strict=False):
        first = {t: row.index(t) for t in reversed(row)}
        pick = min(first, key=lambda t: abs(first[t] - step))
        if len(lengths([*picks, pick])) >= 2:
            picks.append(pick)
    return picks


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-phi"])
def test_own_greedy_loop_equals_generate_one_at_a_time(name, monkeypatch):
    model, tok = load(name)
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    assert len({len(p) for p in prompts}) == len(prompts)  # all lengths differ: left padding is exercised
    max_new = 12
    eos = gen.eos_ids(model, tok)
    first = one_at_a_time(model, prompts, max_new, eos, tok.pad_token_id)
    eos = eos + stop_tokens_at_different_steps(first)
    reference = one_at_a_time(model, prompts, max_new, eos, tok.pad_token_id)
    assert len({len(r) for r in reference}) >= 2, reference  # rows finish at different steps
    monkeypatch.setattr(gen, "COMPACT_SHARE", 0.0)  # rows leave the batch as soon as they finish
    with torch.no_grad():
        ours = gen.greedy_batch(model, prompts, max_new, eos, torch.device("cpu"), gen.Stats())
    assert ours == reference
    monkeypatch.setattr(gen, "COMPACT_SHARE", 1.0)  # finished rows stay to the end
    with torch.no_grad():
        assert gen.greedy_batch(model, prompts, max_new, eos, torch.device("cpu"), gen.Stats()) == reference
        assert gen.greedy_batch(model, prompts[:1], 1, eos, torch.device("cpu"), gen.Stats()) == [reference[0][:1]]
    monkeypatch.setattr(gen, "PREFILL_ROWS", {"cpu": 3})  # prefill as on a GPU: left-padded groups of prompts
    with torch.no_grad():
        assert gen.greedy_batch(model, prompts, max_new, eos, torch.device("cpu"), gen.Stats()) == reference


def config(name: str, **settings) -> TrialConfig:
    from runners.templates import TEMPLATES

    return TrialConfig(
        model=name,
        dataset="synthetic",
        template="custom",
        method="zero_shot",
        model_entry=MODELS[name],
        dataset_entry=DatasetEntry(source="synthetic"),
        template_entry=TEMPLATES["custom"],
        **settings,
    )


@pytest.mark.slow
def test_generate_runs_the_own_loop_and_agrees_with_the_generate_path(monkeypatch):
    model, tok = load("tiny-llama")
    cfg = config("tiny-llama", max_new_tokens=10, eval_batch_size=3)
    prompts = encode_prompts(TEXTS, tok, cfg)
    texts, lengths, timing = gen.generate(model, tok, prompts, cfg, torch.device("cpu"))
    assert timing["decoding"] == "greedy loop" and timing["batches"] == 2
    assert timing["prefill_s"] >= 0 and 0 <= timing["decode_padding_share"] < 1
    eos = gen.eos_ids(model, tok)
    reference = one_at_a_time(model, [p.prompt_ids for p in prompts], 10, eos, tok.pad_token_id)
    assert lengths == [len(r) for r in reference]
    assert texts == [tok.decode(r, skip_special_tokens=True).strip() for r in reference]
    monkeypatch.setattr(gen, "fallback_reason", lambda *a: "forced")
    _, _, timing = gen.generate(model, tok, prompts, cfg, torch.device("cpu"))
    assert timing["decoding"] == "generate"


def test_settings_that_change_greedy_decoding_fall_back_to_generate():
    model, tok = load("tiny-llama")
    cfg = config("tiny-llama")
    eos = gen.eos_ids(model, tok)
    assert gen.fallback_reason(model, cfg, eos) is None
    assert gen.fallback_reason(model, config("tiny-llama", num_beams=2), eos)
    assert gen.fallback_reason(model, config("tiny-llama", do_sample=True), eos)
    for setting in ({"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 3}, {"min_new_tokens": 4}):
        changed = copy.deepcopy(model)
        changed.generation_config.update(**setting)
        assert "logits processors" in gen.fallback_reason(changed, cfg, eos), setting
    t5 = config("tiny-t5")
    from transformers import AutoModelForSeq2SeqLM

    assert gen.fallback_reason(AutoModelForSeq2SeqLM.from_pretrained(resolve_source(MODELS["tiny-t5"])), t5, eos)


def test_eos_ids_join_the_tokenizer_and_the_generation_config():
    model, tok = load("tiny-llama")
    model.generation_config.eos_token_id = [tok.eos_token_id, 7, 9]
    assert gen.eos_ids(model, tok) == [tok.eos_token_id, 7, 9]
    assert gen._length_to_eos([tok.eos_token_id + 100, 9, 7, 1], [tok.eos_token_id, 7, 9], 0) == 2


@pytest.mark.parametrize(
    ("lengths", "budget", "rows", "expected"),
    [
        ([100, 90, 80, 70, 10], 1000, 16, [[0, 1, 2, 3, 4]]),  # budget 1000 // (100 + 64) = 6 rows
        ([500, 400, 300, 200, 100], 1000, 16, [[0], [1, 2], [3, 4]]),  # shorter prompts, more rows per batch
        ([100, 90, 80, 70, 10], 100_000, 2, [[0, 1], [2, 3], [4]]),  # eval_batch_size caps the rows
        ([5000, 10], 1000, 16, [[0], [1]]),  # one row even when it alone exceeds the budget
    ],
)
def test_token_batches_hold_at_most_the_budget(lengths, budget, rows, expected, monkeypatch):
    monkeypatch.setattr(gen, "TOKEN_BUDGET", budget)
    assert gen.token_batches(lengths, config("tiny-llama", max_new_tokens=64, eval_batch_size=rows)) == expected


@pytest.mark.slow
def test_own_loop_equals_generate_on_real_smollm2():
    """SmolLM2-135M on DialogSum test prompts (or the short texts when the data is absent), cut to different
    lengths: the same token ids as `model.generate` one at a time."""
    try:
        model, tok = load("smollm2-135m")
    except Exception as err:  # noqa: BLE001 - the weights come from an optional package
        pytest.skip(f"smollm2-135m unavailable: {err}")
    test = SHARED_DATA / "dialogsum" / "test.jsonl"
    dialogues = [json.loads(line)["dialogue"] for line in test.read_text().splitlines()[:4]] if test.exists() else TEXTS
    cfg = config("smollm2-135m", max_new_tokens=16, max_source_length=512)
    prompts = [p.prompt_ids for p in encode_prompts([d[: 80 + 90 * k] for k, d in enumerate(dialogues)], tok, cfg)]
    eos = gen.eos_ids(model, tok)
    reference = one_at_a_time(model, prompts, 16, eos, tok.pad_token_id)
    with torch.no_grad():
        assert gen.greedy_batch(model, prompts, 16, eos, torch.device("cpu"), gen.Stats()) == reference


def test_prompt_ids_are_what_generation_starts_from():
    enc = Encoded([1, 2, 3, 4], [], 2)
    assert enc.prompt_ids == [1, 2]
