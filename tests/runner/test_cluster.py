"""Studies on Ray clusters of several nodes, all on this machine: real raylets, not mocks.

- `ray.cluster_utils.Cluster` starts a head and worker nodes as processes of the test, and removes a
  node by killing its processes: a lost node, as a reclaimed spot instance is lost.
- Ray's fake multi-node provider (`RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=...`) runs
  the real autoscaler, which starts and stops nodes on this machine as the demand asks. Ray's own
  `AutoscalingCluster` runs `ray stop --force` (every Ray process on the machine), so the head is
  started here, in a process group of its own, and exactly that group is ended.

Every study runs `xattn-ray run --address ...` in a subprocess, as `ray job submit` would run it on a
head. The head offers no CPU, as cluster.yaml's does: trials land on worker nodes only.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from support import assert_exactly_once, free_port, stop_head, summaries, wait_for

pytestmark = pytest.mark.slow

TOKEN_AUTH = {"RAY_AUTH_MODE": "token"}  # a head from `ray start` requires the token by default (Ray >= 2.59)


def run_on(address: str, study: Path, storage: str, **popen) -> subprocess.Popen:
    """`xattn-ray run STUDY --address ADDRESS` in a subprocess; its output is captured."""
    return subprocess.Popen([sys.executable, "-m", "xattn_ray", "run", str(study), "--storage", storage,
                             "--address", address, "--progress-every", "1000"],
                            cwd=study.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ADDRESS": "", **popen.pop("env", {})}, **popen)


def finish(process: subprocess.Popen, timeout: float) -> str:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        process.kill()
    assert process.returncode == 0, out + err
    return out


@pytest.fixture
def cluster():
    """A head offering no CPU but the driver resource, and two 1-CPU worker nodes."""
    from ray.cluster_utils import Cluster

    from xattn_ray.runner.plan import DRIVER_RESOURCE

    # The node address stays the machine's: a client told 127.0.0.1 rewrites it to that address.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {DRIVER_RESOURCE: 2}, "gcs_server_port": free_port(),
        "include_dashboard": True, "dashboard_host": "127.0.0.1", "dashboard_port": free_port()})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        yield cluster
    finally:
        cluster.shutdown()


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def training_trial(cluster) -> tuple[int, object] | None:
    """(pid, node) of a Tune trial process under one of the cluster's worker nodes, if one runs. (Its
    environment is its raylet's, not the driver's: the cluster's nodes are the test's own processes.)"""
    from ray._private import ray_constants

    raylets = {node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid: node
               for node in cluster.worker_nodes}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or b"ray::ImplicitFunc" not in (entry / "cmdline").read_bytes():
                continue
            pid = ancestor = int(entry.name)
            while ancestor > 1 and ancestor not in raylets:
                ancestor = parent_pid(ancestor)
        except OSError:  # the process ended while we looked
            continue
        if ancestor in raylets:
            return pid, raylets[ancestor]
    return None


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "last.pt", map_location="cpu", weights_only=True)["model"]


def test_a_lost_node_s_trial_resumes_on_another_node_from_its_checkpoint(tmp_path, tiny_study, cluster):
    study = tiny_study(tmp_path, children="  []", updates=600, every=20)
    process = run_on(cluster.address, study, "st")
    runs = tmp_path / "st" / "tiny" / "runs"
    checkpoint = wait_for(lambda: next(runs.glob("*/last.pt"), None), 300, "the first checkpoint", process)
    tune_log = wait_for(lambda: next((tmp_path / "st" / "tiny" / "tune" / "parents").glob(
        f"{checkpoint.parent.name}*/result.json"), None), 60, "Tune's record of the trial", process)
    _, lost = wait_for(lambda: training_trial(cluster), 60, "the trial's process", process)
    reported_before = len(tune_log.read_text().splitlines())
    cluster.remove_node(lost, allow_graceful=False)
    lost_at = time.monotonic()
    wait_for(lambda: len(tune_log.read_text().splitlines()) > reported_before, 300, "an update after the loss",
             process)
    to_first_update = time.monotonic() - lost_at
    finish(process, 600)

    (summary,) = summaries(tmp_path / "st", "tiny").values()
    assert summary["status"] == "ok" and summary["updates"] == 600
    reported = [json.loads(line)["update"] for line in tune_log.read_text().splitlines()]
    assert reported[reported_before] > 20  # the retry went on from a checkpoint, not from the start
    assert_exactly_once(tmp_path / "st" / "results", "tiny", 1)
    # The same run, never interrupted, on the node that is left: the same weights, bit for bit.
    finish(run_on(cluster.address, study, "again"), 600)
    (resumed,), (uninterrupted,) = (list((tmp_path / name / "tiny" / "runs").iterdir()) for name in ("st", "again"))
    expected = weights(uninterrupted)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in weights(resumed).items())
    print(f"\nnode loss -> retried trial's first update: {to_first_update:.1f} s")


def test_ddp_workers_on_two_nodes_follow_one_worker_s_loss_curve(tmp_path, tiny_study, cluster):
    """Same global batch (1 x 1200 tokens vs 2 x 600), no dropout. Each worker node has one CPU, so the two
    workers of the second study cannot share a node; its driver holds the head's driver resource."""
    no_dropout = ", dropout: 0.0, attention_dropout: 0.0"
    one = tiny_study(tmp_path, name="one", children="  []", max_tokens=1200, model=no_dropout,
                     extra="resources: {workers: 1}")
    two = tiny_study(tmp_path, name="two", children="  []", max_tokens=600, model=no_dropout,
                     extra="resources: {workers: 2, placement: spread}")
    for study in (one, two):
        finish(run_on(cluster.address, study, "st"), 600)
    (curve_one,), (curve_two,) = ([s["valid_curve"] for s in summaries(tmp_path / "st", name).values()]
                                  for name in ("one", "two"))
    assert [u for u, _ in curve_one] == [u for u, _ in curve_two] == [6, 12]
    for (_, loss_one), (_, loss_two) in zip(curve_one, curve_two):
        assert loss_two == pytest.approx(loss_one, abs=2e-3)


# -- an autoscaling cluster: Ray's fake multi-node provider ------------------------------------------

def autoscaling_config(gcs_address: str, max_nodes: int) -> dict:
    """A launcher config for the fake provider: a head with no CPU, up to `max_nodes` 1-CPU workers from 0."""
    return {
        "cluster_name": "xattn-test", "max_workers": max_nodes, "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.05,  # 3 s: an idle node goes soon after its trial
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "auth": {"ssh_user": "ray"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "cpu-1": {"resources": {"CPU": 1}, "node_config": {}, "min_workers": 0, "max_workers": max_nodes},
        },
        "head_node_type": "ray.head.default",
        **{key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands",
                               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


def worker_nodes(dashboard: str) -> list[dict]:
    """Every worker node the cluster has had, alive or dead, from Ray's state API. (In a subprocess: Ray
    reads RAY_AUTH_MODE once, when imported, and this process imported Ray without it.)"""
    listed = subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "list", "nodes", "--address", dashboard,
                             "--detail", "--format", "json", "--limit", "1000"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, **TOKEN_AUTH})
    if listed.returncode != 0:
        raise RuntimeError(listed.stderr)
    return [node for node in json.loads(listed.stdout) if not node["is_head_node"]]


def trial_spans(tune_dir: Path) -> list[tuple[float, float]]:
    """(start, end) wall-clock seconds of each trial of a Tune run, from its reported results."""
    spans = []
    for log in tune_dir.glob("*/result.json"):
        results = [json.loads(line) for line in log.read_text().splitlines()]
        spans.append((results[0]["timestamp"] - results[0]["time_total_s"], results[-1]["timestamp"]))
    return spans


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_an_autoscaling_cluster_adds_nodes_for_pending_trials_and_removes_them_after(tmp_path, tiny_study):
    from ray._private.services import get_node_ip_address

    port, dashboard_port = free_port(), free_port()
    gcs = f"{get_node_ip_address()}:{port}"
    config = tmp_path / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(autoscaling_config(gcs, max_nodes=3)))
    ray = Path(sys.executable).parent / "ray"
    head = subprocess.Popen([str(ray if ray.exists() else "ray"), "start", "--head", "--block", "--port", str(port),
                             "--num-cpus", "0", "--dashboard-host", "127.0.0.1", "--dashboard-port",
                             str(dashboard_port), "--dashboard-agent-listen-port", str(free_port()),
                             f"--autoscaling-config={config}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env={**os.environ, "RAY_FAKE_CLUSTER": "1", **TOKEN_AUTH}, start_new_session=True)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        wait_for(lambda: _answers(dashboard), 120, "the head's dashboard", head)
        assert worker_nodes(dashboard) == []  # no node before the demand
        # Six one-worker children after their parent, 60 updates each.
        study = tiny_study(tmp_path, grid="grid: {policies: [body, xattn, scratch], seeds: [1]}", updates=60,
                           every=30)
        finish(run_on(gcs, study, "st", env=TOKEN_AUTH), 900)
        started = worker_nodes(dashboard)
        peak = most_at_once(trial_spans(tmp_path / "st" / "tiny" / "tune" / "children"))
        assert 2 <= len(started) <= 3 and peak >= 2
        assert len(summaries(tmp_path / "st", "tiny")) == 7
        assert_exactly_once(tmp_path / "st" / "results", "tiny", 7)
        wait_for(lambda: all(node["state"] == "DEAD" for node in worker_nodes(dashboard)), 180,
                 "the idle nodes to be removed")
        print(f"\nautoscaling: {len(started)} nodes started, at most {peak} child trials at once")
    finally:
        stop_head(head)


def _answers(dashboard: str) -> bool:
    try:
        worker_nodes(dashboard)
        return True
    except Exception:  # noqa: BLE001 - the dashboard is not up yet
        return False
