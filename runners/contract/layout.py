"""The names of a run folder's files: what the driver writes beside the trial folders, and what a trial folder
holds. (A trial's checkpoints are laid out by `runners.checkpoint`, the only module that knows their insides.)"""

from __future__ import annotations

# RUN_DIR/
GRID_YAML = "grid.yaml"  # the resolved grid file that produced the run
RESULTS_CSV = "results.csv"  # one row per trial, from the result.json files
BEST_YAML = "best.yaml"  # `ftgrid tune`: the best configuration as a grid file
PLAN_JSON = "plan.json"  # `ftgrid plan`: the predicted cost of every trial and of the grid
RAY_DIR = ".ray"  # Ray's own bookkeeping (experiment state, Ray's per-trial logs)
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
FIGURES = "figures"
TENSORBOARD = "tensorboard"  # with `tracking: {tensorboard: …}`: TensorBoard event files, one folder per trial id
WANDB = "wandb"  # with `tracking: {wandb: …}`: W&B's own run folders (offline runs stay here until `wandb sync`)
# RUN_DIR/<trial_id>/
TRIAL_JSON = "trial.json"  # the TrialConfig
RESULT_JSON = "result.json"  # written last: its presence with status ok means the trial finished
PREDICTIONS = "predictions.jsonl"  # one line per evaluated example
TRAIN_LOG = "train_log.jsonl"  # one line per logging step (and per eval-loss step)
TRIAL_LOG = "trial.log"  # the trial process's stdout and stderr
ADAPTER = "adapter"  # the LoRA adapter (or the full weights) and the tokenizer
CHECKPOINTS = "checkpoints"  # the last resumable training checkpoint, while the trial trains
LOCK = ".lock"  # held while a trial runs, so two drivers never share a trial folder
# What ftgrid itself writes into a trial folder: none of them may be a symbolic link (runners.contract.files)
TRIAL_ENTRIES = (TRIAL_JSON, RESULT_JSON, PREDICTIONS, TRAIN_LOG, TRIAL_LOG, ADAPTER, CHECKPOINTS, LOCK)
