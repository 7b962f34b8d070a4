"""Limits refused with a message (exit code 2) when a grid is read, not an out-of-memory kill or a traceback later:
prompt plus generated or target tokens beyond the model's context, YAML aliases that expand a few lines into
gigabytes, a cross product of millions of cells. And a full disk ends a run with its summary and a message."""

import errno
import itertools
import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TINY_SETTINGS, write_yaml
from inprocess import ftgrid

from grid.limits import MAX_YAML_NODES
from grid.spec import load_grid
from runners.contract.result import TrialResult

LONG = "settings:\n  max_source_length: 1000\n  max_new_tokens: 100\n  max_target_length: 64\n"


def grid(axes: str, settings: str = LONG) -> str:
    return f"name: t\naxes:\n  dataset: [synthetic]\n{axes}{settings}"


def test_prompt_and_new_tokens_beyond_the_models_context_are_refused_naming_both_numbers_and_the_limit(tmp_path):
    path = write_yaml(tmp_path / "g.yaml", grid("  model: [tiny-llama]\n  method: [lora, zero_shot]\n"))
    done = ftgrid("run", path, "--dry-run", cwd=tmp_path)
    assert done.code == 2 and "Traceback" not in done.output, done.output
    message = " ".join(done.stderr.split())
    assert "max_source_length + max_new_tokens = 1000 + 100 = 1100 tokens: more than the 1024 tokens" in message
    assert "of model tiny-llama's context (max_position_embeddings in its config)" in message
    assert "[cell model=tiny-llama, dataset=synthetic, method=zero_shot]" in message
    assert "max_source_length + max_target_length = 1000 + 64 = 1064 tokens" in message  # training reads both
    fits = ftgrid("run", path, "--dry-run", "--set", "max_source_length=900", cwd=tmp_path)
    assert fits.code == 0, fits.output


def test_ftgrid_trial_refuses_it_too_and_gpt2_counts_n_positions(tmp_path):
    path = write_yaml(tmp_path / "g.yaml", grid("  model: [tiny-gpt2]\n", TINY_SETTINGS))
    done = ftgrid("trial", path, "--set", "max_source_length=1000", "--set", "max_target_length=30", cwd=tmp_path)
    assert done.code == 2 and "Traceback" not in done.output, done.output
    message = " ".join(done.stderr.split())
    assert "1000 + 30 = 1030 tokens: more than the 1024 tokens of model tiny-gpt2's context (n_positions" in message
    assert not (tmp_path / "runs").exists()  # refused before anything ran


def test_a_local_models_config_json_gives_its_limit_and_an_unknown_one_is_no_error(tmp_path):
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bart", "max_position_embeddings": 256}))
    entries = f"models:\n  mine: {{source: {model}, kind: seq2seq}}\n  hub: {{source: nobody/not-cached}}\n"
    path = write_yaml(tmp_path / "g.yaml", grid("  model: [mine, hub, tiny-t5]\n", LONG + entries))
    done = ftgrid("run", path, "--dry-run", cwd=tmp_path)
    assert done.code == 2, done.output
    message = " ".join(done.stderr.split())
    assert "max_source_length = 1000 tokens: more than the 256 tokens of model mine's context" in message
    assert "model hub" not in message and "model tiny-t5" not in message  # not known offline; relative positions
    alone = ftgrid("run", path, "--dry-run", "--set", "model=[hub, tiny-t5]", cwd=tmp_path)
    assert alone.code == 0, alone.output


def billion_laughs(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    axes = f"axes:\n  model: [tiny-llama]\n  dataset: [synthetic]\n  seed: *l{levels - 1}\n"
    return "\n".join(lines) + "\nname: t\n" + axes


@pytest.mark.parametrize("verb", ["run", "tune", "trial"])
def test_yaml_aliases_that_expand_a_small_file_into_gigabytes_are_refused_at_once(tmp_path, verb):
    path = write_yaml(tmp_path / "laughs.yaml", billion_laughs())
    assert path.stat().st_size < 1000  # 9**9 = 387 million strings once expanded
    start = time.monotonic()
    done = ftgrid(verb, path, *(["--dry-run"] if verb != "trial" else []), cwd=tmp_path)
    assert time.monotonic() - start < 2
    assert done.code == 2 and "Traceback" not in done.output, done.output
    assert f"expand it to more than {MAX_YAML_NODES:,} YAML nodes" in " ".join(done.stderr.split())


def test_a_few_aliases_are_fine_and_a_recursive_one_is_refused(tmp_path):
    shared = "name: t\nlr: &lr 1.0e-4\naxes:\n  model: [tiny-llama]\n  dataset: [synthetic]\n"
    path = write_yaml(tmp_path / "ok.yaml", shared.replace("lr: &lr 1.0e-4\n", "") + "settings: &s {seed: 3}\n")
    assert ftgrid("run", path, "--dry-run", cwd=tmp_path).code == 0
    loop = write_yaml(tmp_path / "loop.yaml", "name: t\naxes: &a {model: [tiny-llama], x: *a}\n")
    done = ftgrid("run", loop, "--dry-run", cwd=tmp_path)
    assert done.code == 2 and "Traceback" not in done.output, done.output


def test_a_cross_product_of_millions_of_cells_is_refused_before_any_is_built(tmp_path):
    values = list(range(1, 41))
    axes = "".join(f"  {k}: {values}\n" for k in ("seed", "n_eval", "n_train", "eval_batch_size"))
    path = write_yaml(tmp_path / "g.yaml", grid("  model: [tiny-llama]\n" + axes, ""))
    start = time.monotonic()
    done = ftgrid("run", path, "--dry-run", cwd=tmp_path)
    assert time.monotonic() - start < 2 and done.code == 2, done.output
    assert "40 seed × 40 n_eval × 40 n_train × 40 eval_batch_size make 2,560,000 cells" in " ".join(done.stderr.split())


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs (mounting needs root: skipped without it), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave_pages: int = 0) -> None:
    """Fill a tmpfs with 4 KiB files until it is full, then free `leave_pages` pages of it."""
    filler = disk / "filler"
    filler.mkdir()
    names = (filler / str(i) for i in itertools.count())
    written = []
    try:
        for name in names:
            name.write_bytes(b"x" * 4096)
            written.append(name)
    except OSError as err:
        assert err.errno == errno.ENOSPC
    for name in written[len(written) - leave_pages :] if leave_pages else []:
        name.unlink()


def cached_run(tmp_path: Path, run_dir: Path) -> Path:
    """A grid of one trial whose finished result.json is already in `run_dir`."""
    path = write_yaml(tmp_path / "g.yaml", grid("  model: [tiny-llama]\n", TINY_SETTINGS))
    _, trials = load_grid(path)
    cfg = trials[0]
    TrialResult(cfg.trial_id, config=cfg.model_dump(mode="json"), metrics={"rougeL": 12.5}).write(
        run_dir / cfg.trial_id
    )
    return path


def test_a_full_disk_before_anything_ran_is_a_message_and_exit_code_1(tmp_path, tiny_disk):
    path = cached_run(tmp_path, tiny_disk / "run")
    fill(tiny_disk)
    done = ftgrid("run", path, "--out", tiny_disk / "run", cwd=tmp_path)
    assert done.code == 1 and "Traceback" not in done.output, done.output
    message = " ".join(done.stderr.split())
    assert f"no space left on the device of the run folder ({tiny_disk / 'run' / 'grid.yaml'})" in message
    assert "free some space (or give --out on another disk)" in message


def test_a_full_disk_while_the_driver_writes_results_csv_ends_with_the_summary_and_the_message(tmp_path, tiny_disk):
    path = cached_run(tmp_path, tiny_disk / "run")
    fill(tiny_disk, leave_pages=1)  # grid.yaml fits, results.csv does not
    done = ftgrid("run", path, "--out", tiny_disk / "run", cwd=tmp_path)
    assert done.code == 1 and "Traceback" not in done.output, done.output
    assert (tiny_disk / "run" / "grid.yaml").is_file() and not (tiny_disk / "run" / "results.csv").exists()
    out, message = " ".join(done.stdout.split()), " ".join(done.stderr.split() + done.stdout.split())
    assert "done: 0 ok · 1 cached · 0 failed · best rougeL 12.50" in out, done.output  # the summary
    assert f"no space left on the device of the run folder ({tiny_disk / 'run' / 'results.csv'})" in message
