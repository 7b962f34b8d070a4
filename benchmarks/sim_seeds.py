"""Calibration of ftgrid's comparison tests by simulation, with a known truth.

For each setting (dialogues, seeds per cell, seed sd, per-output noise sd) it simulates GRIDS grids of two cells
(`tests/seed_simulation.py`: dialogue, dialogue-by-cell, seed and output effects) and runs the real comparison
(`analysis.compare.compare` on the frames `analysis.load` reads from such run folders):
- with no true difference: the false-positive rate of the seed test (seeds as the unit of replication, paired
  over dialogues) and of the example-only test on one seed per cell (what a single-seed grid reports);
- with a true difference equal to the predicted minimum detectable difference (80% power, alpha 0.05; the root
  mean square over the null grids of each grid's prediction): the measured power of the seed test, beside 80%.
Prints a table and writes benchmarks/results/sim_seeds.json.

    python benchmarks/sim_seeds.py                 # the settings below, 1000 grids each
    python benchmarks/sim_seeds.py --grids 200     # quicker, wider Monte-Carlo error
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from seed_simulation import frames, scores  # noqa: E402

from analysis.compare import compare  # noqa: E402
from analysis.sequential import decide  # noqa: E402

# (dialogues, seeds per cell, seed sd, output noise sd)
SETTINGS = [(100, 3, 1.5, 10.0), (500, 3, 1.5, 10.0), (100, 5, 1.5, 10.0), (50, 3, 0.5, 10.0), (100, 3, 3.0, 10.0)]
RESAMPLES = 400


def tested(runs, one_seed: bool = False):
    if one_seed:
        runs = {key: value for key, value in runs.items() if key[1] == 1}
    return compare(*frames(runs), axis="loss", metrics="rouge1", n_resamples=RESAMPLES).iloc[0]


def setting(n: int, seeds: int, seed_sd: float, noise_sd: float, grids: int) -> dict:
    rng = np.random.default_rng([n, seeds, int(seed_sd * 10), int(noise_sd * 10)])
    null_seed, null_single, mdds = 0, 0, []
    for _ in range(grids):
        runs = scores(rng, n, seeds, 0.0, seed_sd, noise_sd)
        row = tested(runs)
        null_seed += row["p"] < 0.05
        null_single += tested(runs, one_seed=True)["p"] < 0.05
        mdds.append(row["mdd"])
    # The difference the design detects with 80% power is lambda * sqrt(V) at the true V: each grid's mdd is
    # lambda * sqrt(V-hat), and V-hat is unbiased, so the root mean square of the mdds estimates it (their
    # median sits below it: with 3 seeds a cell, sqrt(V-hat) is skewed low).
    mdd = float(np.sqrt(np.mean(np.square(mdds))))
    hits = sum(tested(scores(rng, n, seeds, mdd, seed_sd, noise_sd))["p"] < 0.05 for _ in range(grids))
    mc = math.sqrt(0.05 * 0.95 / grids)
    return {
        "dialogues": n,
        "seeds": seeds,
        "seed_sd": seed_sd,
        "noise_sd": noise_sd,
        "grids": grids,
        "fpr_seed_test": null_seed / grids,
        "fpr_example_only": null_single / grids,
        "fpr_mc_error": mc,
        "predicted_mdd": mdd,
        "power_at_mdd": hits / grids,
        "power_mc_error": math.sqrt(0.8 * 0.2 / grids),
    }


SEQUENTIAL = (100, 2, 6, 1.5, 10.0)  # dialogues, first seeds, cap, seed sd, noise sd


def sequential(delta: float, grids: int) -> dict:
    """`--until-decided` on simulated grids: seeds revealed a round at a time (the first `first`, then one more
    per round up to `cap`), the real rule deciding; the share of grids decided significant and the trials used."""
    n, first, cap, seed_sd, noise_sd = SEQUENTIAL
    looks = cap - first + 1
    rng = np.random.default_rng([n, cap, int(delta * 100)])
    significant, trials = 0, []
    for _ in range(grids):
        runs = scores(rng, n, cap, delta, seed_sd, noise_sd)
        for look in range(1, looks + 1):
            seen = {key: value for key, value in runs.items() if key[1] <= first + look - 1}
            row = decide(compare(*frames(seen), axis="loss", metrics="rouge1", n_resamples=RESAMPLES), look, looks)
            if row["decided"].iloc[0] or look == looks:
                significant += bool(row["decided"].iloc[0])
                trials.append(len(seen))
                break
    return {
        "delta": delta,
        "grids": grids,
        "decided_significant": significant / grids,
        "mean_trials": float(np.mean(trials)),
    }


def fixed_power(delta: float, seeds: int, grids: int) -> float:
    """The power of a fixed design: every cell trained `seeds` times, one test at alpha."""
    n, _, _, seed_sd, noise_sd = SEQUENTIAL
    rng = np.random.default_rng([n, seeds, int(delta * 100), 1])
    return sum(tested(scores(rng, n, seeds, delta, seed_sd, noise_sd))["p"] < 0.05 for _ in range(grids)) / grids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grids", type=int, default=1000, help="simulated grids per setting and truth")
    args = parser.parse_args()
    rows, started = [], time.perf_counter()
    print("dialogues seeds seed_sd noise | FPR seed test | FPR example-only | MDD (80%) | power at MDD")
    for n, seeds, seed_sd, noise_sd in SETTINGS:
        row = setting(n, seeds, seed_sd, noise_sd, args.grids)
        rows.append(row)
        print(
            f"{n:9d} {seeds:5d} {seed_sd:7.1f} {noise_sd:5.0f} | {row['fpr_seed_test']:13.3f} | "
            f"{row['fpr_example_only']:16.3f} | {row['predicted_mdd']:9.2f} | {row['power_at_mdd']:.3f}",
            flush=True,
        )
    n, first, cap, seed_sd, noise_sd = SEQUENTIAL
    print(f"--until-decided: {n} dialogues, {first} to {cap} seeds per cell, seed sd {seed_sd}, noise sd {noise_sd}")
    null = sequential(0.0, args.grids)
    print(f"  no true difference: decided significant in {null['decided_significant']:.3f} of grids (alpha 0.05)")
    effect = rows[0]["predicted_mdd"]  # what 3 seeds per cell detect with 80% power
    alt = sequential(effect, args.grids)
    fixed = {seeds: fixed_power(effect, seeds, args.grids) for seeds in range(first + 1, cap + 1)}
    reach = min((s for s, power in fixed.items() if power >= alt["decided_significant"]), default=None)
    power, used = alt["decided_significant"], alt["mean_trials"]
    print(f"  true difference {effect:.2f}: power {power:.3f}, {used:.1f} trials on average")
    for seeds, power in fixed.items():
        print(f"  fixed design, {seeds} seeds per cell ({2 * seeds} trials): power {power:.3f}")
    if reach:
        print(f"  the fixed design needs {2 * reach} trials to reach that power", flush=True)
    out = ROOT / "benchmarks" / "results" / "sim_seeds.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    fixed_record = {str(k): v for k, v in fixed.items()}
    record = {"settings": rows, "sequential": {"null": null, "effect": alt, "fixed_power": fixed_record, "cap": cap}}
    out.write_text(json.dumps({**record, "wall_s": round(time.perf_counter() - started, 1)}, indent=2))
    print(f"± Monte-Carlo error: FPR {rows[0]['fpr_mc_error']:.3f}, power {rows[0]['power_mc_error']:.3f} → {out}")


if __name__ == "__main__":
    main()
