"""Statistics over seeds: a repeated cell is compared over its seeds (Welch t, paired over dialogues), one seed
per cell gives the paired test of before and says it covers the test set only, a difference inside the seed noise
is flagged, the power line through the CLI, and the calibration of both tests on simulated grids with a known
truth (the false-positive rate of the seed test holds alpha; the example-only test's does not)."""

import json
import re

import numpy as np
import pytest
from analysis_fixtures import base_config, write_trial
from inprocess import ftgrid
from scipy import stats as sps
from seed_simulation import frames, scores

from analysis.compare import compare
from analysis.load import load_examples, load_trials
from analysis.seeds import standard_errors
from analysis.stats import paired_tests


def write_runs(run_dir, runs):
    for (loss, seed), rouge1 in runs.items():
        write_trial(run_dir, base_config(loss=loss, seed=seed), rouge1=rouge1, seed=seed)


@pytest.mark.parametrize("df", [2.0, 4.0, 11.5])
def test_the_minimum_detectable_difference_is_found_with_80_percent_power_by_the_t_test(df):
    shift = standard_errors(df)
    crit = sps.t.ppf(0.975, df)
    assert sps.nct.sf(crit, df, shift) + sps.nct.cdf(-crit, df, shift) == pytest.approx(0.8, abs=1e-3)
    assert shift > sps.t.ppf(0.975, df) + sps.t.ppf(0.8, df)  # the approximation promises power it lacks
    t_values = (np.random.default_rng(1).standard_normal(200_000) + shift) / np.sqrt(
        np.random.default_rng(2).chisquare(df, 200_000) / df
    )
    assert np.mean(np.abs(t_values) > crit) == pytest.approx(0.8, abs=0.005)  # Monte Carlo of the same power
    assert standard_errors(1e6) == pytest.approx(sps.norm.ppf(0.975) + sps.norm.ppf(0.8), abs=1e-3)


def test_the_simulated_frames_are_what_the_loader_reads_from_run_folders(tmp_path):
    runs = scores(np.random.default_rng(1), n=30, seeds=3, delta=2.0, seed_sd=1.5, noise_sd=10)
    write_runs(tmp_path, runs)
    on_disk = compare(load_trials(tmp_path), load_examples(tmp_path), axis="loss", metrics="rouge1")
    simulated = compare(*frames(runs, run_dir=str(tmp_path)), axis="loss", metrics="rouge1")
    columns = ["seeds_a", "seeds_b", "value_a", "value_b", "delta", "low", "high", "p", "seed_sd", "mdd"]
    assert on_disk[columns].to_dict("records")[0] == pytest.approx(simulated[columns].to_dict("records")[0])


def test_a_repeated_cell_is_compared_over_its_seeds(tmp_path):
    runs = scores(np.random.default_rng(2), n=80, seeds=3, delta=3.0, seed_sd=2.0, noise_sd=10)
    row = compare(*frames(runs), axis="loss", metrics="rouge1").iloc[0]
    assert (row["seeds_a"], row["seeds_b"], row["n"]) == (3, 3, 80) and row["covers"] == "seeds and test set"
    means = {key: float(np.mean(v)) for key, v in runs.items()}
    assert row["value_a"] == pytest.approx(np.mean([means[("full", s)] for s in (1, 2, 3)]))
    assert row["delta"] == pytest.approx(row["value_b"] - row["value_a"])
    assert row["low"] < row["delta"] < row["high"] and 2 < row["df"] < 80 and row["mdd"] > 0


def test_one_seed_per_cell_gives_the_paired_test_and_says_it_covers_the_test_set_only(tmp_path):
    runs = scores(np.random.default_rng(3), n=50, seeds=1, delta=2.0, seed_sd=1.5, noise_sd=10)
    trials, examples = frames(runs)
    row = compare(trials, examples, axis="loss", metrics="rouge1").iloc[0]
    by_trial = dict(tuple(examples.groupby("trial_id")))
    a, b = (by_trial[trials.loc[trials["loss"] == loss, "trial_id"].item()] for loss in ("full", "summary_only"))
    before = paired_tests(a, b, ["rouge1"])["rouge1"]
    assert (row["p"], row["low"], row["high"], row["delta"]) == pytest.approx(
        (before["p"], before["low"], before["high"], before["delta"])
    )
    assert row["covers"] == "test set only" and not row["within_seed_noise"]
    write_runs(tmp_path, runs)
    shown = ftgrid("table", tmp_path, "--compare", "loss", "--metric", "rouge1")
    assert shown.returncode == 0, shown.stderr
    assert "cover the test set only, not a second training run" in shown.stdout
    records = json.loads(
        ftgrid("table", tmp_path, "--compare", "loss", "--metric", "rouge1", "--format", "json").stdout
    )
    assert [r["covers"] for r in records] == ["test set only"]


@pytest.mark.slow
def test_a_difference_inside_the_seed_noise_is_flagged_and_the_power_line_says_what_it_would_need(tmp_path):
    runs = scores(np.random.default_rng(8), n=60, seeds=3, delta=0.3, seed_sd=4.0, noise_sd=10)
    row = compare(*frames(runs), axis="loss", metrics="rouge1", target=1.0).iloc[0]
    assert row["within_seed_noise"] and row["seed_sd"] > abs(row["delta"])
    assert row["seeds_needed"] is None or row["seeds_needed"] > 3
    write_runs(tmp_path, runs)
    shown = ftgrid("table", tmp_path, "--compare", "loss", "--metric", "rouge1", "--power", "1.0")
    assert shown.returncode == 0, shown.stderr
    for text in ("seeds needed", "dialogues needed", "within seed noise", "cover a new training run"):
        assert text in shown.stdout, text
    assert ftgrid("table", tmp_path, "--compare", "loss", "--power", "-1").returncode == 2
    cells = ftgrid("table", tmp_path, "--metric", "rouge1")
    assert cells.returncode == 0 and "seeds" in cells.stdout and "rouge1 seed sd" in cells.stdout
    with_ci = ftgrid("table", tmp_path, "--metric", "rouge1", "--ci")
    assert with_ci.returncode == 0 and re.search(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", with_ci.stdout), with_ci.stdout
    report = ftgrid("report", tmp_path, "--metric", "rouge1")
    assert report.returncode == 0, report.stderr
    assert "cover a new training run" in (tmp_path / "report.md").read_text()


def test_best_and_baseline_compare_cells_over_their_seeds_not_the_luckiest_seed(tmp_path):
    # full has the single best seed (60) but the lower mean (40 against 50): a cell is its seeds' mean
    per_seed = {("full", 1): 60.0, ("full", 2): 30.0, ("full", 3): 30.0}
    per_seed |= {("summary_only", 1): 50.0, ("summary_only", 2): 50.0, ("summary_only", 3): 50.0}
    for (loss, seed), mean in per_seed.items():
        write_trial(tmp_path, base_config(loss=loss, seed=seed), rouge1=np.full(20, mean), seed=seed)
    write_trial(tmp_path, base_config(loss="none", lora_rank=0, method="zero_shot"), rouge1=np.full(20, 20.0))
    best = ftgrid("table", tmp_path, "--best", "method", "--metric", "rouge1", "--format", "json")
    assert best.returncode == 0, best.stderr
    lora = next(row for row in json.loads(best.stdout) if row["method"] == "lora")
    assert (lora["loss"], lora["seeds"], lora["rouge1"]) == ("summary_only", 3, 50.0)
    assert "seed" not in lora
    base = ftgrid("table", tmp_path, "--baseline", "method=zero_shot", "--metric", "rouge1", "--format", "json")
    assert base.returncode == 0, base.stderr
    rouge1 = next(row for row in json.loads(base.stdout) if row["metric"] == "rouge1")
    assert (rouge1["loss=full"], rouge1["loss=summary_only"]) == (40.0, 50.0)
    assert rouge1["improvement (loss=summary_only vs baseline)"] == "+150%"
    shown = ftgrid("table", tmp_path, "--baseline", "method=zero_shot", "--metric", "rouge1")
    assert "mean over its seeds (3 a condition)" in shown.stdout and "seed=" not in shown.stdout


def false_positives(n: int, seeds: int, grids: int, seed_sd: float, noise_sd: float) -> tuple[float, float]:
    """(rate of the seed test, rate of the example-only test on the first seed) under no true difference."""
    rng = np.random.default_rng([n, seeds, grids])
    hits = np.zeros(2)
    for _ in range(grids):
        runs = scores(rng, n, seeds, 0.0, seed_sd, noise_sd)
        seeded = compare(*frames(runs), axis="loss", metrics="rouge1", n_resamples=400).iloc[0]
        first = {key: value for key, value in runs.items() if key[1] == 1}
        single = compare(*frames(first), axis="loss", metrics="rouge1", n_resamples=400).iloc[0]
        hits += [seeded["p"] < 0.05, single["p"] < 0.05]
    return tuple(hits / grids)


@pytest.mark.slow
def test_the_seed_test_holds_its_false_positive_rate_where_the_example_only_test_does_not():
    seeded, single = false_positives(n=100, seeds=3, grids=300, seed_sd=1.5, noise_sd=10)
    assert seeded <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 300), seeded
    assert single >= 0.15, single  # training luck reported as a difference
