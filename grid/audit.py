"""What `ftgrid audit` shows of one training example: the exact ids and labels the trainer sees as a JSON line
(`--json`, the contract), or the prompt and the text of the tokens the loss is taken on, for reading."""

from __future__ import annotations

import json

from rich.console import Console


def as_json_line(cfg, tokenizer, row: dict, enc) -> str:
    """One JSON line: the exact ids and labels the trainer sees (the `ftgrid audit --json` contract)."""
    from runners.models import resolve_source

    record = {
        "id": row["id"],
        "template": cfg.template,
        "loss": cfg.loss,
        "tokenizer": resolve_source(cfg.model_entry),
        "prompt": tokenizer.decode(enc.prompt_ids),
        "summary": row["summary"],
        "input_ids": enc.input_ids,
        "labels": enc.labels,
    }
    return json.dumps(record)


def as_text(out: Console, cfg, tokenizer, row: dict, enc, supervised: list[int]) -> None:
    """The prompt and the text of the tokens the loss is taken on, for reading."""
    out.rule(f"{row['id']}  ({cfg.template}, loss {cfg.loss}, {cfg.model})")
    out.print("[bold]prompt[/]", highlight=False)
    out.print(tokenizer.decode(enc.prompt_ids), markup=False, highlight=False)
    shortened = " (dialogue shortened)" if enc.dialogue_truncated else ""
    out.print(f"[bold]loss on {len(supervised)} of {enc.n_targets} tokens[/]{shortened}:", highlight=False)
    out.print(repr(tokenizer.decode(supervised)), markup=False, highlight=False)
