"""The resource plan, in plain Python: what a trial holds, how many run at once on fixed and growing
clusters, and on a cluster launcher config at its maximum size."""

import pytest
import yaml

from xattn_ray.errors import ConfigError
from xattn_ray.runner.plan import DRIVER_RESOURCE, nodes_at_max_size, plan_resources, trials_at_once
from xattn_ray.study.sweep import ResourcesConfig

from support import PROJECT, xattn_ray


def test_a_fixed_cluster_runs_what_fits_and_never_asks_for_more_than_exists():
    assert plan_resources(ResourcesConfig(), {"CPU": 2}).concurrent == 2
    assert plan_resources(ResourcesConfig(cpus_per_worker=2), {"CPU": 5}).concurrent == 2
    several = plan_resources(ResourcesConfig(workers=2), {"CPU": 7})
    assert several.per_trial() == {"CPU": 3.0} and several.concurrent == 2  # driver CPU + 2 workers
    with pytest.raises(ConfigError, match="needs 3 CPU but the cluster has 2"):
        plan_resources(ResourcesConfig(workers=2), {"CPU": 2})


def test_max_concurrent_is_a_number_of_runs_not_a_cap_on_what_fits_now():
    assert plan_resources(ResourcesConfig(max_concurrent=1), {"CPU": 8}).concurrent == 1
    assert plan_resources(ResourcesConfig(max_concurrent=6), {"CPU": 2}).concurrent == 6  # the rest queue
    assert plan_resources(ResourcesConfig(max_concurrent=6), {"CPU": 0}, autoscaling=True).concurrent == 6
    # Except where more drivers than fit would hold the CPUs their own workers wait for.
    assert plan_resources(ResourcesConfig(workers=2, max_concurrent=6), {"CPU": 7}).concurrent == 2


def test_a_growing_cluster_gets_every_trial_as_pending_demand():
    """cluster.yaml's head offers no CPU and no GPU node is up yet: floor(0 / 8) must not mean one at a time."""
    for resources in (ResourcesConfig(), ResourcesConfig(workers=8, cpus_per_worker=4, gpus_per_worker=1)):
        plan = plan_resources(resources, {"CPU": 0}, autoscaling=True)
        assert plan.concurrent is None
        assert plan.widened(1, 0.0) is plan  # nodes still to come: nothing to widen into


def test_drivers_of_several_worker_runs_hold_the_driver_resource_where_the_cluster_offers_it():
    ddp = ResourcesConfig(workers=8, cpus_per_worker=4, gpus_per_worker=1)
    plan = plan_resources(ddp, {"CPU": 0, DRIVER_RESOURCE: 8}, autoscaling=True)
    assert plan.trial_resources == {DRIVER_RESOURCE: 1.0}  # on a non-spot node, taking no worker's CPU
    assert plan.per_trial() == {DRIVER_RESOURCE: 1.0, "CPU": 32.0, "GPU": 8.0}
    assert plan_resources(ddp, {"CPU": 0}, autoscaling=True).trial_resources == {"CPU": 1.0}
    one = plan_resources(ResourcesConfig(), {"CPU": 4, DRIVER_RESOURCE: 8})
    assert one.trial_resources == {"CPU": 1.0}  # a one-worker trial trains in its own process


def test_a_lone_run_is_widened_within_one_node():
    lone = plan_resources(ResourcesConfig(), {"CPU": 2}).widened(1, 2.0)
    assert lone.trial_resources == {"CPU": 2.0} and lone.concurrent == 1  # a lone parent gets both CPUs
    # Three 1-CPU nodes hold 3 CPUs, but one request never spans nodes.
    assert plan_resources(ResourcesConfig(), {"CPU": 3}).widened(1, 1.0).trial_resources == {"CPU": 1.0}


def launcher_config(head: dict, workers: dict[str, tuple[dict, int]], max_workers: int) -> dict:
    types = {"head": {"resources": head, "node_config": {}, "max_workers": 0}}
    types.update({name: {"resources": resources, "node_config": {}, "min_workers": 0, "max_workers": count}
                  for name, (resources, count) in workers.items()})
    return {"available_node_types": types, "head_node_type": "head", "max_workers": max_workers}


def test_trials_at_once_at_the_clusters_maximum_size():
    config = launcher_config({"CPU": 0, DRIVER_RESOURCE: 8},
                             {"big": ({"CPU": 96, "GPU": 8, DRIVER_RESOURCE: 4}, 2), "spot": ({"CPU": 4, "GPU": 1}, 6)}, 8)
    nodes = nodes_at_max_size(config, "c.yaml")
    assert [len(group) for group in nodes.values()] == [1, 2, 6]
    every = [node for group in nodes.values() for node in group]
    ddp = plan_resources(ResourcesConfig(workers=8, cpus_per_worker=4, gpus_per_worker=1), {DRIVER_RESOURCE: 16},
                         autoscaling=True)
    assert trials_at_once(ddp, every) == 2  # 8 + 8 + 6 one-GPU slots: two groups of eight
    one_gpu = plan_resources(ResourcesConfig(cpus_per_worker=4, gpus_per_worker=1), {}, autoscaling=True)
    assert trials_at_once(one_gpu, every) == 22
    capped = plan_resources(ResourcesConfig(cpus_per_worker=4, gpus_per_worker=1, max_concurrent=5), {},
                            autoscaling=True)
    assert trials_at_once(capped, every) == 5
    # The config's own max_workers caps all worker types together, spent on the biggest nodes first.
    small = nodes_at_max_size({**config, "max_workers": 3}, "c.yaml")
    assert [len(group) for group in small.values()] == [1, 2, 1]


def test_a_node_type_without_resources_is_named():
    config = launcher_config({"CPU": 0}, {"gpu": ({"CPU": 4}, 2)}, 2)
    del config["available_node_types"]["gpu"]["resources"]
    with pytest.raises(ConfigError, match=r"c.yaml: available_node_types.gpu.resources"):
        nodes_at_max_size(config, "c.yaml")


def test_the_shipped_cluster_config_runs_the_paper_study_two_at_a_time():
    config = yaml.safe_load((PROJECT / "cluster.yaml").read_text())
    every = [node for group in nodes_at_max_size(config, "cluster.yaml").values() for node in group]
    total = {key: sum(node.get(key, 0.0) for node in every) for key in ("CPU", "GPU", DRIVER_RESOURCE)}
    ddp = plan_resources(ResourcesConfig(workers=8, cpus_per_worker=4, gpus_per_worker=1), total, autoscaling=True)
    assert trials_at_once(ddp, every) == 2


def test_validate_prints_the_runs_at_once_on_a_cluster_config(tmp_path):
    config = launcher_config({"CPU": 0, DRIVER_RESOURCE: 8}, {"cpu": ({"CPU": 1}, 3)}, 3)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    done = xattn_ray("validate", PROJECT / "experiments" / "quickstart.yaml", "--cluster", "c.yaml",
                     "--storage", "st", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "on c.yaml at its maximum size (1 head + 3 cpu): 3 runs at once, each holding 1 CPU" in done.stdout


def test_a_ray_client_address_is_refused_in_one_line(tmp_path):
    done = xattn_ray("run", PROJECT / "experiments" / "quickstart.yaml", "--address", "ray://10.0.0.1:10001",
                     "--storage", "st", cwd=tmp_path)
    assert done.returncode == 2 and "ray job submit" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "st" / "quickstart" / "runs").exists()
