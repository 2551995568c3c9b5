"""The deployment files, read as their tools read them: cluster.yaml (the Ray cluster launcher on AWS),
deploy/kuberay/ (a KubeRay RayJob and its shared volume), and the pins and floors they rely on.

Nothing here starts a machine: `ray up` needs AWS and `kubectl apply` a Kubernetes cluster. What can be
checked offline is checked: the launcher's own schema from the installed wheel, the fields KubeRay
requires, one Ray version everywhere, and what the study needs of a cluster (shared storage, S3
access from every node, drivers off spot nodes).
"""

import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from support import PROJECT

CLUSTER_YAML = PROJECT / "cluster.yaml"
KUBERAY = PROJECT / "deploy" / "kuberay"
# The custom resource the drivers of several-worker runs ask for (runner/plan.py, DRIVER_RESOURCE).
DRIVER_RESOURCE = "xattn_driver"
RAY_IMAGE = re.compile(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py3\d+-gpu")


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def constraint_pins() -> dict[str, str]:
    """constraints.txt as {package: version}; every line must be a plain `name==version` pin, the only
    form pip accepts in a constraints file (no extras)."""
    pins = {}
    for line in (PROJECT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert not requirement.extras and spec.operator == "==", line
            pins[requirement.name] = spec.version
    return pins


def image_ray_version(image: str) -> str:
    match = RAY_IMAGE.fullmatch(image)
    assert match, f"{image}: not one of Ray's GPU images, rayproject/ray:X.Y.Z-pyNN-gpu"
    return match["ray"]


# -- cluster.yaml: the Ray cluster launcher on AWS -------------------------------------------------------

def launcher_config() -> dict:
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(load_yaml(CLUSTER_YAML))  # the defaults `ray up` fills in, merged as it merges them


def worker_types(config: dict) -> dict[str, dict]:
    return {name: spec for name, spec in config["available_node_types"].items() if name != config["head_node_type"]}


def is_spot(node_type: dict) -> bool:
    return node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"


def test_cluster_yaml_passes_the_cluster_launchers_schema():
    """Without AWS credentials the launcher cannot start nodes here; its own schema check runs offline:
    ray/autoscaler/ray-schema.json of the installed wheel."""
    from ray.autoscaler._private.util import validate_config

    config = launcher_config()
    validate_config(config)
    assert {"gpu-8x-a100", "gpu-1x-spot"} <= set(worker_types(config))


def test_every_worker_node_has_an_instance_profile():
    """Ray gives its own IAM role to the head only; trials and drivers on a worker without a profile
    could not write to `--store s3://...`."""
    for name, spec in worker_types(launcher_config()).items():
        profile = spec["node_config"].get("IamInstanceProfile", {})
        assert re.fullmatch(r"arn:aws:iam::[^:]+:instance-profile/.+", profile.get("Arn", "")), name


def test_one_ray_version_in_cluster_yaml_constraints_and_this_environment():
    config = launcher_config()
    docker = config["docker"]
    assert not {"head_image", "worker_image"} & set(docker)  # one image for every node
    assert image_ray_version(docker["image"]) == constraint_pins()["ray"] == ray.__version__
    # The project goes into the image with the constraints file, so pip cannot replace the image's Ray.
    installs = [command for command in config["setup_commands"] if command.startswith("pip install")]
    assert installs and all("-c ~/xattn-ray/constraints.txt" in command for command in installs)
    assert config["file_mounts"]["~/xattn-ray"] == "."  # ... the constraints file and project of this checkout


def test_efs_utils_is_installed_before_the_shared_file_system_is_mounted():
    """`mount -t efs` is amazon-efs-utils' helper. With a container, the host mounts the file system
    (initialization_commands run there, before the container starts) and lends it to the container."""
    config = launcher_config()
    host = config["initialization_commands"]
    install = next(i for i, command in enumerate(host) if re.search(r"install .*amazon-efs-utils", command))
    mount = next(i for i, command in enumerate(host) if "mount -t efs" in command)
    assert install < mount
    mount_point = host[mount].split()[-1].rstrip(")")
    assert f"--volume {mount_point}:{mount_point}" in config["docker"]["run_options"]
    assert not any("mount -t efs" in command for command in config["setup_commands"])  # not from inside


def test_drivers_of_several_worker_runs_stay_off_spot_nodes():
    """The head runs no trials but offers the driver resource; on-demand GPU nodes offer it too, spot
    nodes never (a reclaimed node would end the whole run, not one worker)."""
    config = launcher_config()
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    assert head["CPU"] == 0 and head[DRIVER_RESOURCE] > 0
    workers = worker_types(config)
    assert any(spec["resources"].get(DRIVER_RESOURCE, 0) > 0 for spec in workers.values() if not is_spot(spec))
    assert [name for name, spec in workers.items() if is_spot(spec) and DRIVER_RESOURCE in spec["resources"]] == []
    assert any(is_spot(spec) for spec in workers.values())


def test_every_node_turns_token_authentication_on_with_the_same_token():
    config = launcher_config()
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all(command.startswith("RAY_AUTH_MODE=token ray start") for command in starts)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


# -- deploy/kuberay: a RayJob and its volume ----------------------------------------------------------

# The fields KubeRay requires, from its CRD ray-operator/config/crd/bases/ray.io_rayjobs.yaml in
# ray-project/kuberay at v1.7.0 (`required:` of rayClusterSpec, headGroupSpec, workerGroupSpecs items, the
# pod spec and its containers); rayStartParams is required up to KubeRay 1.3, so the file gives it too.
REQUIRED = {
    "rayClusterSpec": ["headGroupSpec"],
    "headGroupSpec": ["rayStartParams", "template"],
    "workerGroupSpec": ["groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"],
    "podSpec": ["containers"],
    "container": ["name", "image"],  # `image`: required by Kubernetes when the pod is created
}


def rayjob() -> dict:
    return load_yaml(KUBERAY / "rayjob.yaml")


def pod_templates(job: dict) -> dict[str, dict]:
    """The head's and each worker group's pod spec, by group name."""
    cluster = job["spec"]["rayClusterSpec"]
    specs = {"head": cluster["headGroupSpec"]["template"]["spec"]}
    specs.update({group["groupName"]: group["template"]["spec"] for group in cluster["workerGroupSpecs"]})
    return specs


def start_resources(params: dict) -> dict:
    """`rayStartParams.resources` as Ray reads it: a shell word holding JSON."""
    (text,) = shlex.split(params["resources"])
    return json.loads(text)


def test_the_rayjob_has_the_fields_kuberay_requires():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", job["metadata"]["name"])  # a DNS-1035 label
    spec = job["spec"]
    assert spec["entrypoint"].strip()
    cluster = spec["rayClusterSpec"]
    groups = {"head": cluster["headGroupSpec"], **{g["groupName"]: g for g in cluster["workerGroupSpecs"]}}
    assert cluster["workerGroupSpecs"] and all(field in cluster for field in REQUIRED["rayClusterSpec"])
    for name, group in groups.items():
        required = REQUIRED["headGroupSpec" if name == "head" else "workerGroupSpec"]
        assert [field for field in required if field not in group] == [], name
        assert all(isinstance(value, str) for value in group["rayStartParams"].values()), name  # map of strings
        pod = group["template"]["spec"]
        assert all(field in pod for field in REQUIRED["podSpec"]) and pod["containers"], name
        for container in pod["containers"]:
            assert [field for field in REQUIRED["container"] if not container.get(field)] == [], name
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]


def test_the_rayjob_starts_its_own_autoscaling_cluster_with_token_authentication_and_ends_it():
    spec = rayjob()["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["rayClusterSpec"]["enableInTreeAutoscaling"] is True
    assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token"


def test_the_rayjob_runs_the_image_and_the_ray_of_cluster_yaml():
    job = rayjob()
    image = load_yaml(CLUSTER_YAML)["docker"]["image"]
    images = {container["image"] for pod in pod_templates(job).values() for container in pod["containers"]}
    assert images == {image}
    assert job["spec"]["rayClusterSpec"]["rayVersion"] == image_ray_version(image) == constraint_pins()["ray"]


def test_the_rayjob_head_offers_no_cpu_and_the_driver_resource():
    head = rayjob()["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert start_resources(head["rayStartParams"])[DRIVER_RESOURCE] > 0
    assert "resources" not in head  # KubeRay 1.5+ refuses resources given both here and in rayStartParams


def test_the_gpu_workers_ask_kubernetes_for_gpus():
    for group in rayjob()["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        for container in group["template"]["spec"]["containers"]:
            resources = container["resources"]
            assert int(resources["limits"]["nvidia.com/gpu"]) >= 1, group["groupName"]
            # Kubernetes does not overcommit GPUs: a request, if given, must equal the limit.
            assert resources.get("requests", {}).get("nvidia.com/gpu", resources["limits"]["nvidia.com/gpu"]) \
                == resources["limits"]["nvidia.com/gpu"]


def test_the_shared_volume_is_read_write_many_and_mounted_alike_where_the_study_writes():
    claim = load_yaml(KUBERAY / "storage.yaml")
    assert claim["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in claim["spec"]["accessModes"]
    job = rayjob()
    mount_paths = set()
    for name, pod in pod_templates(job).items():
        volumes = [v["name"] for v in pod["volumes"]
                   if v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]]
        assert len(volumes) == 1, name
        mounts = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
                  if m["name"] == volumes[0]]
        assert mounts, name
        mount_paths.update(mounts)
    assert len(mount_paths) == 1  # the same path on the head and on every worker
    (mount_path,) = mount_paths
    args = shlex.split(job["spec"]["entrypoint"])
    storage = Path(args[args.index("--storage") + 1])
    assert storage.is_relative_to(mount_path) and storage != Path(mount_path)


def test_the_rayjob_installs_the_project_and_runs_an_experiment_it_holds():
    spec = rayjob()["spec"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"].endswith(".zip")  # a source archive: its experiments/ are the job's
    requirements = [Requirement(line) for line in runtime_env["pip"]]
    pinned = {r.name: r.specifier for r in requirements if r.name != "xattn-ray"}
    assert pinned == {"torch": SpecifierSet(f"=={constraint_pins()['torch']}")}
    assert any(r.name == "xattn-ray" and r.url for r in requirements)
    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["xattn-ray", "run"] and (PROJECT / args[2]).is_file()
    assert args[args.index("--address") + 1] == "auto"


# -- pyproject.toml: the floors the code needs ------------------------------------------------------------

def test_pyproject_floors_and_the_cluster_extra():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    dependencies = {r.name: r for r in map(Requirement, project["dependencies"])}
    # TuneReportCallback and Train V2 are Ray's defaults from 2.51; fused Adam on CPU needs torch 2.4.
    assert dependencies["ray"].extras == {"default", "tune", "train"}
    assert dependencies["ray"].specifier == SpecifierSet(">=2.51,<3")
    assert dependencies["torch"].specifier == SpecifierSet(">=2.4")
    assert project["optional-dependencies"]["cluster"] == ["boto3"]  # `ray up` drives AWS through boto3
    pins = constraint_pins()
    assert pins["ray"] in dependencies["ray"].specifier and pins["torch"] in dependencies["torch"].specifier
