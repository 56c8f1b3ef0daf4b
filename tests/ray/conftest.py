"""A real two-node Ray cluster on this machine (two raylets, one per node, sharing its Docker engine),
started once for the package's tests and stopped by them: every process it started is gone afterwards, and so
is every scratch directory evalkit's actors made (their nodes' temp directory is the cluster's own)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster

NODE_A, NODE_B, NODE_C = "evalkit_node_a", "evalkit_node_b", "evalkit_node_c"
"""Custom resources that tell the two nodes apart; both offer `docker`."""
LABEL = "evalkit-test-node"
"""A Ray node label with the values `a` and `b`: the other way to tell them apart."""
_OBJECT_STORE = 80 * 1024 * 1024
_SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}
"""A dead node is noticed within seconds rather than the default half minute."""


@dataclass
class RayTestCluster:
    cluster: Cluster
    node_b: object | None
    scratch: Path
    """The nodes' temp directory (`TMPDIR` of their raylets and workers): where actors keep scratch files."""
    client_port: int
    """The head's Ray Client server (`ray://127.0.0.1:<port>`)."""
    started: set[int] = field(default_factory=set)
    """Every process the cluster ran at some point (descendants of this test process), checked at the end."""

    def snapshot(self) -> None:
        self.started |= {pid for pid in _descendants(os.getpid()) if _is_ray(_cmdline(pid))}

    def node_ids(self) -> dict[str, str]:
        """Custom label → node id, of the live nodes."""
        return {label: n["NodeID"] for n in ray.nodes() if n["Alive"] for label in (NODE_A, NODE_B, NODE_C) if label in n["Resources"]}

    def raylet_pid(self, node: object) -> int:
        return node.all_processes["raylet"][0].process.pid  # type: ignore[attr-defined]

    def replace_node_b(self) -> None:
        """After a test killed node B: a fresh node B (other tests expect two nodes)."""
        self.drop_node_b()
        self.node_b = self.cluster.add_node(**_node_b_args(self.scratch))
        self.cluster.wait_for_nodes()
        self.snapshot()

    def drop_node_b(self) -> None:
        """Forget a killed node B (the cluster then counts one node fewer)."""
        if self.node_b is not None:
            self.cluster.remove_node(self.node_b, allow_graceful=False)
            self.node_b = None

    def add_node_without_docker(self) -> object:
        """A third node that offers `docker` but whose Docker engine does not answer (a dead socket)."""
        node = self.cluster.add_node(num_cpus=1, resources={"docker": 1, NODE_C: 1}, object_store_memory=_OBJECT_STORE,
                                     env_vars={"TMPDIR": str(self.scratch), "DOCKER_HOST": f"unix://{self.scratch}/no-docker.sock"})
        self.cluster.wait_for_nodes()
        self.snapshot()
        return node

    def node_agents(self) -> list[int]:
        """The processes hosting an evalkit NodeAgent actor on this cluster now."""
        return [pid for pid in _descendants(os.getpid()) if _cmdline(pid).startswith(b"ray::NodeAgent") and _alive(pid)]

    def scratch_dirs(self) -> list[str]:
        return sorted(p.name for p in self.scratch.glob("evalkit-ray-*"))


def _node_b_args(scratch: Path) -> dict:
    return {"num_cpus": 1, "resources": {"docker": 1, NODE_B: 1}, "labels": {LABEL: "b"}, "object_store_memory": _OBJECT_STORE,
            "env_vars": {"TMPDIR": str(scratch)}}


class Gate:
    """A port on 127.0.0.1 that refuses connections until the test opens it: a task whose solve waits on it
    (`solve`, host network) keeps its try running until then, so a test acts mid-try without timing guesses."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))  # bound, not listening: a connection is refused
        self.port = self.sock.getsockname()[1]

    @property
    def solve(self) -> str:
        return (f"until (exec 3<>/dev/tcp/127.0.0.1/{self.port}) 2>/dev/null; do sleep 0.2; done; "
                "echo done > /tmp/out.txt")

    def open(self) -> None:
        self.sock.listen(128)


async def until(condition: Callable[[], Awaitable[bool]], what: str, timeout_sec: float = 300) -> None:
    """Wait for an async condition; the bound is generous (a loaded machine is slow, not wrong)."""
    deadline = time.monotonic() + timeout_sec
    while not await condition():
        assert time.monotonic() < deadline, f"not reached in {timeout_sec:g} s: {what}"
        await asyncio.sleep(0.3)


@pytest.fixture
def gate() -> Iterator[Gate]:
    opened = Gate()
    try:
        yield opened
    finally:
        opened.sock.close()


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[RayTestCluster]:
    previous = os.environ.get("RAY_USAGE_STATS_ENABLED")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray would otherwise report to a public address
    scratch = Path(tempfile.mkdtemp(prefix="evalkit-raytests-"))
    client_port = _free_port()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"docker": 1, NODE_A: 1}, "labels": {LABEL: "a"}, "include_dashboard": False,
        "object_store_memory": _OBJECT_STORE, "_system_config": _SYSTEM_CONFIG, "env_vars": {"TMPDIR": str(scratch)},
        "ray_client_server_port": client_port,
    })
    node_b = cluster.add_node(**_node_b_args(scratch))
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    test_cluster = RayTestCluster(cluster, node_b, scratch, client_port)
    test_cluster.snapshot()
    try:
        yield test_cluster
    finally:
        test_cluster.snapshot()
        ray.shutdown()
        cluster.shutdown()
        if previous is None:
            os.environ.pop("RAY_USAGE_STATS_ENABLED", None)
        else:
            os.environ["RAY_USAGE_STATS_ENABLED"] = previous
        left = _wait_gone(test_cluster.started, timeout_sec=60)
        scratch_left = test_cluster.scratch_dirs()
        shutil.rmtree(scratch, ignore_errors=True)
        assert left == [], f"Ray processes left running: {left}"
        assert scratch_left == [], f"evalkit scratch directories left on the nodes: {scratch_left}"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = set(), [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            if child not in found:
                found.add(child)
                queue.append(child)
    return found


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _is_ray(cmdline: bytes) -> bool:
    """Ray's own processes: its binaries and scripts, and workers (which retitle themselves `ray::…`)."""
    return cmdline.startswith(b"ray::") or b"/site-packages/ray/" in cmdline


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: set[int], *, timeout_sec: float) -> list[str]:
    deadline = time.monotonic() + timeout_sec
    while True:
        left = [pid for pid in pids if _alive(pid)]
        if not left or time.monotonic() > deadline:
            return [f"{pid} {_cmdline(pid)[:80]!r}" for pid in left if _alive(pid)]
        time.sleep(0.5)
