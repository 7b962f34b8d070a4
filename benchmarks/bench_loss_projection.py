"""The training loss with logits only where a label is taken, against logits at every position.

    python benchmarks/bench_loss_projection.py --steps 2 --reps 2

One ftgrid LoRA trial of smollm2-135m on DialogSum (batch 4, group_by_length off), run in a fresh process
per repetition with `runners.train.labelled_loss` (the default for decoder-only models) and with the
model's own loss over all positions, alternating. Reports useful training tokens/s, peak RSS and the
final loss (which must be the same) for `summary_only` and `full` loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import DEFAULT_DATA, PYTHON, header, median, print_table, results_path, run_json, write_results

GRID = """\
name: loss_projection
datasets:
  dialogsum_local: {{source: {data}, eval_split: test}}
axes:
  model: [{model}]
  dataset: [dialogsum_local]
  template: [alpaca]
  method: [lora]
  lora_rank: [16]
settings: {{max_steps: {steps}, batch_size: 4, n_train: {n_train}, n_eval: 1, max_new_tokens: 4, logging_steps: 1}}
"""


def worker(args) -> None:
    import runners.train as train

    if args.worker == "all-positions":
        train.projects_only_labelled = lambda model: False
    from grid.spec import load_grid
    from runners.trial import execute

    with tempfile.TemporaryDirectory() as tmp:
        grid = Path(tmp) / "grid.yaml"
        grid.write_text(GRID.format(data=args.data, model=args.model, steps=args.steps, n_train=args.steps * 4))
        _, trials = load_grid(grid, sets={"loss": args.loss})
        code, result = execute(trials[0], Path(tmp) / "trial")
    if code:
        raise SystemExit(result.get("error"))
    t = result["train"]
    Path(args.json).write_text(
        json.dumps(
            {
                "tokens_per_s": t["train_tokens_per_s"],
                "wall_s": t["wall_s"],
                "peak_rss_mb": t["peak_memory_mb"],
                "final_loss": t["final_loss"],
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny-llama, 2 steps, 1 repetition")
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", choices=["labelled", "all-positions"], help=argparse.SUPPRESS)
    parser.add_argument("--loss", default="summary_only", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.model, args.steps, args.reps = "tiny-llama", 2, 1
    payload = header("bench_loss_projection", args, None)
    rows, runs = [], {}
    for loss in ("summary_only", "full"):
        for rep in range(args.reps):
            order = ["labelled", "all-positions"] if rep % 2 == 0 else ["all-positions", "labelled"]
            for mode in order:
                cmd = [
                    PYTHON,
                    __file__,
                    "--worker",
                    mode,
                    "--loss",
                    loss,
                    "--model",
                    args.model,
                    "--data",
                    args.data,
                    "--steps",
                    str(args.steps),
                ]
                runs.setdefault(f"{loss}/{mode}", []).append(run_json(cmd))
        base = median([r["tokens_per_s"] for r in runs[f"{loss}/all-positions"]])
        for mode in ("all-positions", "labelled"):
            done = runs[f"{loss}/{mode}"]
            tps = median([r["tokens_per_s"] for r in done])
            rows.append(
                [
                    f"{loss}, {mode}",
                    tps,
                    round(tps / base, 2),
                    median([r["peak_rss_mb"] for r in done]),
                    done[0]["final_loss"],
                ]
            )
    payload.update(settings=vars(args) | {"batch_size": 4}, runs=runs, table=rows)
    print_table(
        f"{args.model}: loss over labelled positions vs all positions",
        ["loss, logits", "tokens/s (median)", "× all positions", "peak RSS MiB", "final loss"],
        rows,
    )
    print(write_results(results_path("bench_loss_projection", args.quick, args.out), payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
