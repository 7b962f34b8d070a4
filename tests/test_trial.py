"""One trial end to end on tiny models: files, result keys, scores, learning, failures, 4-bit, seq2seq."""

import json
import subprocess
import sys

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from grid.spec import load_grid
from runners.contract.result import read_result
from runners.trial import execute

RESULT_KEYS = {"trial_id", "status", "error", "config", "metrics", "train", "eval", "versions", "protocol"}
METRIC_KEYS = {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "gen_len", "length_ratio"}
TRAIN_KEYS = {"steps", "final_loss", "train_tokens_per_s", "peak_memory_mb", "trainable_params", "wall_s"}


def run(grid_path, tmp_path, **sets):
    _, trials = load_grid(grid_path, sets=sets)
    cfg = trials[0]
    return execute(cfg, tmp_path / "run" / cfg.trial_id) + (tmp_path / "run" / cfg.trial_id,)


@pytest.fixture(scope="module")
def tiny_trial(tmp_path_factory):
    """A finished tiny-llama LoRA trial (gradient checkpointing on), shared by the tests that only read it."""
    from conftest import TINY_SETTINGS, write_yaml

    tmp = tmp_path_factory.mktemp("tiny")
    grid = write_yaml(
        tmp / "g.yaml",
        "name: t\naxes:\n  model: [tiny-llama]\n  dataset: [synthetic]\n"
        "  template: [custom]\n  method: [lora]\n  lora_rank: [4]\n"
        + TINY_SETTINGS
        + "  eval_steps: 2\n  gradient_checkpointing: true\n",
    )
    code, result, trial_dir = run(grid, tmp)
    assert code == 0, result.error
    return result, trial_dir


def test_trial_writes_every_file_with_all_result_keys(tiny_trial):
    result, trial_dir = tiny_trial
    assert {p.name for p in trial_dir.iterdir()} >= {
        "trial.json",
        "result.json",
        "predictions.jsonl",
        "train_log.jsonl",
        "adapter",
    }
    assert (trial_dir / "adapter" / "adapter_config.json").exists()
    assert set(result.to_json()) >= RESULT_KEYS and result.ok
    assert set(result.metrics) >= METRIC_KEYS and set(result.train) >= TRAIN_KEYS
    assert {"n_examples", "gen_tokens_per_s"} <= set(result.eval)
    assert result.train["steps"] == 4 and 0 < result.train["trainable_params"] < result.train["total_params"]
    assert json.loads((trial_dir / "trial.json").read_text()) == result.config
    log = [json.loads(line) for line in (trial_dir / "train_log.jsonl").read_text().splitlines()]
    train_lines = [line for line in log if "loss" in line]
    assert [line["step"] for line in train_lines] == [2, 4]
    assert all({"loss", "lr", "tokens_per_s"} <= set(line) for line in train_lines)
    assert [line["step"] for line in log if "eval_loss" in line] == [2, 4]


def test_scores_equal_a_recomputation_from_predictions(tiny_trial):
    result, trial_dir = tiny_trial
    rows = [json.loads(line) for line in (trial_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == result.eval["n_examples"] == 6
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        per = [max(scorer.score(ref, r["prediction"])[key].fmeasure for ref in r["references"]) for r in rows]
        assert result.metrics[key] == pytest.approx(100 * sum(per) / len(per), abs=1e-3)
    bleu = sacrebleu.corpus_bleu([r["prediction"] for r in rows], [[r["references"][0] for r in rows]]).score
    assert result.metrics["bleu"] == pytest.approx(bleu, abs=1e-3)


@pytest.mark.slow
def test_fine_tuned_tiny_model_beats_its_zero_shot_baseline(tiny_grid, tmp_path):
    grid = tiny_grid()
    settings = dict(max_steps=150, learning_rate=1e-2, n_train=None, batch_size=8, n_eval=16, max_new_tokens=32)
    code_ft, tuned, _ = run(grid, tmp_path, **settings)
    code_zs, zero, _ = run(grid, tmp_path, method="zero_shot", n_eval=16, max_new_tokens=32)
    assert code_ft == code_zs == 0
    assert tuned.metrics["rougeL"] > zero.metrics["rougeL"] + 15, (tuned.metrics, zero.metrics)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_seq2seq_trial(tiny_grid, tmp_path, method):
    grid = tiny_grid(
        f"model: [tiny-t5]\n  dataset: [synthetic]\n  template: [t5]\n  method: [{method}]\n  lora_rank: [4]"
    )
    code, result, trial_dir = run(grid, tmp_path)
    assert code == 0, result.error
    assert "target only" in result.train["loss_tokens"]
    if method == "full":
        assert result.train["trainable_params"] == result.train["total_params"]


def test_qlora_puts_4bit_layers_under_the_adapter(tiny_grid):
    import bitsandbytes as bnb
    import torch

    from runners.models import apply_lora, load_model

    _, trials = load_grid(tiny_grid(), sets={"method": "qlora"})
    model = apply_lora(load_model(trials[0], torch.device("cpu")), trials[0])
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    # Inference takes the one CPU path on every CPU: with AVX512-BF16, bitsandbytes' fused bf16 kernel would refuse
    # the tiny model's layers (sizes not multiples of 32) and score in bf16 elsewhere.
    assert all(not m.support_avx512bf16_for_cpu for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.slow
def test_qlora_on_real_smollm2_weights(tiny_grid, tmp_path):
    grid = tiny_grid(
        "model: [smollm2-135m]\n  dataset: [synthetic]\n  template: [chat]\n  method: [qlora]\n  lora_rank: [8]"
    )
    code, result, trial_dir = run(grid, tmp_path, max_steps=2, n_eval=4, max_new_tokens=24)
    assert code == 0, result.error
    assert result.config["quant_type"] == "nf4" and result.train["steps"] == 2
    assert all(r["prediction"] for r in map(json.loads, (trial_dir / "predictions.jsonl").read_text().splitlines()))


def test_a_process_kept_from_a_larger_trial_reports_each_trials_own_peak_memory(tiny_grid, tmp_path):
    """A Ray worker runs trial after trial (and pilot after pilot): a trial's `peak_memory_mb` is its own, not the
    largest the process ever had (on a CPU the RSS high-water mark is reset as a trial starts)."""
    import torch

    from runners.placement import peak_memory_mb

    cpu = torch.device("cpu")
    ballast = torch.ones(2**28)  # 1 GiB, touched, then freed: what an earlier, larger trial left as the peak
    ballast += 1
    earlier = peak_memory_mb(cpu)
    del ballast
    code, result, _ = run(tiny_grid(), tmp_path)
    assert code == 0, result.error
    assert 0 < result.train["peak_memory_mb"] < earlier - 512, (result.train["peak_memory_mb"], earlier)


def test_a_time_boxed_trial_trains_its_steps_and_its_seconds_then_stops(tiny_grid, tmp_path):
    """`ftgrid plan`'s pilots: training stops once both the steps and the seconds after the warm-up step have passed
    (every process at the same step), long before max_steps; the train block says so."""
    from runners.execution import Execution

    _, trials = load_grid(tiny_grid(), sets={"max_steps": 100_000, "logging_steps": 1})
    code, result = execute(trials[0], tmp_path / "steps", Execution(time_box=(6, 0.0)))
    assert code == 0, result.error
    assert result.train["steps"] == 6 and result.train["time_box"] == [6, 0.0]
    code, result = execute(trials[0], tmp_path / "seconds", Execution(time_box=(2, 1.5)))
    assert code == 0, result.error
    train = result.train
    assert 2 < train["steps"] < 100_000 and train["time_box"] == [2, 1.5]
    assert train["wall_s"] - train["first_step_s"] >= 1.5 - 0.0055  # wall_s is rounded to 0.01 s, first_step_s to 0.001
    log = [json.loads(line) for line in (tmp_path / "seconds" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == train["steps"]


def test_a_time_boxed_summary_only_run_times_both_loss_strategies_apart(tiny_grid, tmp_path, monkeypatch):
    """A plan's pilot measures what a step costs under each loss strategy in one run: after the warm-up step, every
    other step trains on the full sequence (every real token labelled), each timed apart. Building the model on
    its first use is timed apart too (`fetch_s`: a plan keeps it out of the fixed cost)."""
    import torch

    from runners.execution import Execution
    from runners.masking import IGNORE
    from runners.train import _Loop

    _, trials = load_grid(tiny_grid(), sets={"max_steps": 100_000, "logging_steps": 1})
    monkeypatch.setenv("FTGRID_CACHE", str(tmp_path / "cache"))  # the model is built by the first trial
    code, result = execute(trials[0], tmp_path / "boxed", Execution(time_box=(5, 0.0)))
    assert code == 0, result.error
    assert set(result.train["step_s_by_loss"]) == {"summary_only", "full"}
    assert all(s > 0 for s in result.train["step_s_by_loss"].values())
    assert result.placement["fetch_s"] > 0
    code, result = execute(trials[0].model_copy(update={"max_steps": 5}), tmp_path / "plain")
    assert code == 0 and "step_s_by_loss" not in result.train  # a trial that is not a pilot trains on its own loss
    assert result.placement["fetch_s"] == 0

    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": (ids > 0).long(), "labels": torch.tensor([[IGNORE] * 3 + [8]] * 2)}
    loop = _Loop(trials[0], None, 10, 4, probe={"summary_only": [0.0, 0, 0], "full": [0.0, 0, 0]})
    taken = []
    for step in range(4):  # the labels the coming step (step + 1) trains on
        loop.step = step
        taken.append(loop.probe_loss(batch)["labels"].tolist())
    full = [[5, 6, 7, 8], [5, 6, IGNORE, IGNORE]]
    assert taken == [batch["labels"].tolist(), full, batch["labels"].tolist(), full]


def test_nan_loss_stops_with_a_clear_error(tiny_grid, tmp_path):
    code, result, trial_dir = run(tiny_grid(), tmp_path, learning_rate=1e30, method="full", max_steps=6)
    assert code == 1 and result.status == "failed"
    assert "loss became" in result.error and "learning_rate" in result.error
    assert read_result(trial_dir).status == "failed"


def test_a_failing_trial_leaves_a_failed_result(tiny_grid, tmp_path):
    grid = tiny_grid(extra="models:\n  broken: {source: /nonexistent/model}\n")
    _, trials = load_grid(grid, picks={"model": "broken"})
    code, result = execute(trials[0], tmp_path / trials[0].trial_id)
    assert code == 1 and result.status == "failed" and "/nonexistent/model" in result.error


@pytest.mark.slow
def test_summarize_uses_the_trained_adapter_and_answers_with_the_summary_only(tiny_trial):
    """Library warnings (transformers' FutureWarning about gradient checkpointing) and progress bars (loading
    weights) go to the log, shown with -v: not on stdout or stderr of the answer."""
    _, trial_dir = tiny_trial

    def summarize(*flags):
        return subprocess.run(
            [sys.executable, "-m", "grid", "summarize", *flags, str(trial_dir), "-"],
            input="Anna: Can we meet on Friday?\nBen: Yes, at noon.",
            capture_output=True,
            text=True,
        )

    proc = summarize()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and len(proc.stdout.strip().splitlines()) <= 2
    assert proc.stderr == "", proc.stderr
    assert not any(noise in proc.stdout for noise in ("Warning", "it/s", "%|")), proc.stdout
    verbose = summarize("-v")
    assert verbose.returncode == 0 and verbose.stdout == proc.stdout  # the same answer
    assert "Loading weights" in verbose.stderr and "Warning" in verbose.stderr  # the noise, in the log


FIRST_TRIAL_OF_A_PROCESS = """
import json, sys
import runners.trial as trial
from grid.spec import load_grid

after_stack = {}
stack = trial.import_stack
trial.import_stack = lambda: (stack(), after_stack.update(modules=set(sys.modules)))[0]
cfg = load_grid(sys.argv[1])[1][0]
code, result = trial.execute(cfg, __import__("pathlib").Path(sys.argv[2]) / cfg.trial_id)
assert code == 0, result.error
print(json.dumps(sorted(set(sys.modules) - after_stack["modules"])))
"""


@pytest.mark.slow
def test_the_stack_a_trial_imports_apart_from_its_wall_time_is_all_it_imports(tiny_grid, tmp_path):
    """`import_stack` (timed apart: `ftgrid plan` counts it once per fresh process) imports every library a trial
    uses, so the first trial of a process does not pay inside its wall time what a later one does not (rouge's
    scorer brings nltk and scipy: 1-2.5 s). Within those libraries, modules may still come later (the model's own)."""
    script = tmp_path / "first.py"
    script.write_text(FIRST_TRIAL_OF_A_PROCESS)
    proc = subprocess.run([sys.executable, str(script), str(tiny_grid()), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    later = json.loads(proc.stdout.splitlines()[-1])
    first_imported = {m for m in later if "." not in m} - {"runners", "grid"}
    assert not first_imported, f"packages first imported by the trial itself: {first_imported}"
