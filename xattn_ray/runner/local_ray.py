"""The embedded Ray instance (`xattn-ray run` without `--address`): loopback only, token authentication on.

A study's Ray instance runs whatever code reaches its GCS or raylet, so on a shared machine it must
not be reachable from the network, nor by other users of this machine without the token:

- Ray 2.60 on Linux binds its GCS, raylet, object manager, workers and dashboard agent to every
  interface (0.0.0.0), unless the node's address is exactly 127.0.0.1; and `ray.init` turns a node
  address of 127.0.0.1 into the machine's network address, unless Ray thinks this platform forms no
  clusters (as on macOS and Windows). So the instance starts with that belief in force.
- Token authentication is switched on whatever the caller's `RAY_AUTH_MODE` says, and the token
  file (Ray writes it with the default umask, readable by everyone) is made private to its owner.

docs/ray-facts.md, "Bind addresses and token authentication", has the measurements.
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path

import ray
import ray._private.ray_constants as ray_constants
from ray._private.authentication import authentication_token_setup

from xattn_ray.errors import XattnError

LOOPBACK = "127.0.0.1"


def start_local_ray(num_cpus: int | None, runtime_env: dict) -> None:
    """A new Ray instance on this machine that listens on 127.0.0.1 only and requires its token."""
    _make_token_private()
    # Ray reads RAY_AUTH_MODE once, when it is imported; this sets it and makes Ray read it again.
    authentication_token_setup._enable_token_auth()
    clusters = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # else ray.init replaces 127.0.0.1 by the network address
    try:
        # "local": always a new instance, never a cluster some other command left running here.
        ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env, log_to_driver=False,
                 _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = clusters


def token_file() -> Path | None:
    """Where Ray reads its token: RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token (None: RAY_AUTH_TOKEN holds it)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def _make_token_private() -> None:
    """Create the token file readable by its owner only, or take group and world access off an existing one."""
    path = token_file()
    if path is None:
        return
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if path.stat().st_mode & 0o077:
                path.chmod(0o600)
        else:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32))  # what Ray's own generator writes: 256 random bits
    except OSError as err:
        raise XattnError(f"cannot make Ray's token file {path} private to its owner: {err.strerror or err}") from None


def end_local_ray() -> None:
    """SIGKILL every process of the embedded Ray instance this process started (if it started one).

    Ray's processes are meant to share the driver's fate, but its dashboard and runtime-env agents
    sometimes outlive a killed raylet for minutes (ray-project/ray#52385; here, in about one exit in
    four). The instance's processes are this one's descendants (the agents are the raylet's children).
    Linux only: elsewhere this does nothing and Ray's fate sharing is all there is.
    """
    if not Path("/proc/self/stat").exists():
        return
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue  # /proc/self, /proc/meminfo, ...
        try:
            parent = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # a process that ended while we looked
        children.setdefault(parent, []).append(int(entry.name))
    found, generation = [], [os.getpid()]
    while generation:
        generation = [child for pid in generation for child in children.get(pid, ())]
        found += generation
    for pid in found:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass  # already gone
