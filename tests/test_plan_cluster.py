"""`ftgrid plan --address` on a real two-node Ray cluster on this machine: the plan sees both nodes, and the schedule
it simulates starts the trials in the order Ray does and puts them together on a node as Ray does."""

import json
import subprocess
import sys

import pytest
from conftest import TINY_SETTINGS, write_yaml

from runners.contract.result import read_result

pytestmark = pytest.mark.slow


@pytest.mark.timeout(1800)  # pilots, then four trials one node-wide at a time: 4 min idle, 15 beside a busy suite
def test_the_simulated_schedule_places_trials_as_ray_does(local_cluster, tmp_path):
    local_cluster.start_head(cpus=2, gpus=0)
    local_cluster.add_node(cpus=2, gpus=0)
    axes = "model: [tiny-llama]\n  dataset: [synthetic]\n  template: [custom]\n  method: [lora]\n"
    axes += "  loss: [summary_only, full]\n  lora_rank: [2, 4]"
    # one trial per node at a time; rank 4 and the full loss train far longer, so which trial ends first is plain
    extra = "overrides:\n  - match: {lora_rank: 4}\n    settings: {max_steps: 80}\n"
    extra += "  - match: {loss: full}\n    settings: {max_steps: 160}\nresources:\n  cpus_per_trial: 2\n"
    grid = write_yaml(tmp_path / "g.yaml", f"name: two\naxes:\n  {axes}\n{TINY_SETTINGS}{extra}")
    run_dir = tmp_path / "run"
    for verb in ("plan", "run"):
        cmd = [sys.executable, "-m", "grid", verb, str(grid), "--address", local_cluster.address, "--out", str(run_dir)]
        if verb == "plan":
            cmd += ["--pilots", str(tmp_path / "pilots")]
        done = subprocess.run(cmd, capture_output=True, text=True, env=local_cluster.env, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["total"]["nodes"] == [{"cpus": 2.0, "gpus": 0}, {"cpus": 2.0, "gpus": 0}]
    simulated = sorted(plan["trials"], key=lambda t: (t["start_s"], t["node"]))
    ran = {t["trial_id"]: read_result(run_dir / t["trial_id"]) for t in plan["trials"]}
    actual = sorted(ran, key=lambda i: ran[i].placement["granted_at"])  # the order Ray gave them resources
    first_two = {t["trial_id"] for t in simulated[:2]}
    assert set(actual[:2]) == first_two  # the first two start at once, one a node
    assert ran[actual[0]].placement["node_id"] != ran[actual[1]].placement["node_id"]
    assert actual[2:] == [t["trial_id"] for t in simulated[2:]]  # then the rest in the same order

    def together(node_of: dict) -> set[frozenset]:
        nodes: dict = {}
        for trial_id, node in node_of.items():
            nodes.setdefault(node, set()).add(trial_id)
        return {frozenset(s) for s in nodes.values()}

    assert together({t["trial_id"]: t["node"] for t in plan["trials"]}) == together(
        {i: r.placement["node_id"] for i, r in ran.items()}
    )
