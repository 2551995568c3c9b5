"""The embedded Ray instance, started the way `xattn-ray run` starts it (`connect(None)`), on a real Ray:
every socket its processes listen on is on 127.0.0.1, it refuses requests without its token even when
the caller's environment says RAY_AUTH_MODE=disabled, and its token file is private to its owner.

Listening sockets are read from /proc (Linux): the TCP tables give each listening socket's address
and inode, and /proc/PID/fd tells which of the instance's processes holds it."""

import ipaddress
import os
import select
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc")

# Starts the instance, runs a task (so a worker process listens too), says where the dashboard is,
# and keeps the instance up until its standard input closes.
INSTANCE = """
import sys, ray
from xattn_ray.runner.study import connect
connect(None, num_cpus=1)
ray.get(ray.remote(lambda: 1).remote())
print(ray._private.worker.get_dashboard_url(), flush=True)
sys.stdin.read()
ray.shutdown()
"""


def descendants(root: int) -> set[int]:
    """`root` and every process below it."""
    parent_of = {}
    for entry in Path("/proc").iterdir():
        try:
            # the command name (field 2) may hold spaces and parentheses: the parent id follows its last ')'
            parent_of[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError):
            continue  # not a process, or one that just ended
    family, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parent_of.items() if parent in family} - family
        family |= children
        grew = bool(children)
    return family


def listening(pids: set[int]) -> dict[str, str]:
    """`address:port` -> process name, for every TCP socket the processes `pids` listen on."""
    listeners = {}  # socket inode -> address:port
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc writes each 32-bit word of the address in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            ip = ipaddress.ip_address(raw)
            ip = ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip
            listeners[fields[9]] = f"{ip}:{int(port, 16)}"
    found = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in listeners:
                    found[listeners[target[8:-1]]] = name
        except OSError:
            continue  # a process that ended meanwhile
    return found


def test_the_embedded_instance_listens_on_loopback_only_and_requires_its_token(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": "local"}
    env.pop("RAY_AUTH_TOKEN", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    instance = subprocess.Popen([sys.executable, "-c", INSTANCE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        ready, _, _ = select.select([instance.stdout], [], [], 120)
        assert ready, "the Ray instance did not start within 120 s"
        dashboard = instance.stdout.readline().strip()
        assert dashboard.startswith("127.0.0.1:")
        sockets = listening(descendants(instance.pid))
        names = set(sockets.values())
        assert {"gcs_server", "raylet"} <= names  # the instance's own processes were found
        assert {address: name for address, name in sockets.items() if not address.startswith("127.0.0.1:")} == {}
        with pytest.raises(urllib.error.HTTPError) as refused:  # no token, no answer
            urllib.request.urlopen(f"http://{dashboard}/api/version", timeout=10)
        assert refused.value.code == 401
    finally:
        instance.stdin.close()
        instance.wait(timeout=60)
    token = home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and len(token.read_text()) == 64


def test_an_existing_token_file_is_made_private(tmp_path, monkeypatch):
    from xattn_ray.runner.local_ray import _make_token_private, token_file

    path = tmp_path / "token"
    path.write_text("a" * 64)
    path.chmod(0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    assert token_file() == path
    _make_token_private()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text() == "a" * 64  # kept, not replaced
