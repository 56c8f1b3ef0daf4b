"""The model route into a `none` container, from inside a real trial: the trial's own route answers, and
nothing else on the host does (the upstream's port, the gateway's TCP port, another trial's socket). The runtime
tree is read-only, and a whole trial leaves nothing installed in the container's filesystem."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import aiodocker
import pytest

from evalkit import evaluate
from evalkit.agents.base import AgentResult
from evalkit.agents.scaffold import LOG_DIR, ROUTE_PORT, InContainerAgent, Route, Var
from evalkit.config import AgentConfig
from evalkit.runtimes import FORWARDER, RUNTIME_MOUNT, SCAFFOLDS
from tests.agents.conftest import answer_task, job_config
from tests.agents.scripted import solver
from tests.gateway.fake_upstream import FakeUpstream, Reply
from tests.runtimes.containers import changed_paths

pytestmark = pytest.mark.docker

PROBE = r"""
trap '' PIPE  # a write to a connection the forwarder dropped must not kill the probe
ask() {  # an HTTP request on a fresh TCP connection: the status line, or why there was none
  exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || { echo refused; return; }
  printf 'GET /v1/models HTTP/1.0\r\nAuthorization: Bearer %s\r\n\r\n' "$KEY" >&3
  read -r status <&3 || status="no answer"; exec 3>&-; echo "${status%$'\r'}"
}
echo "own route: $(ask $ROUTE_PORT)"
echo "upstream port: $(ask $UPSTREAM_PORT)"
echo "gateway tcp port: $(ask $GATEWAY_PORT)"
echo "other route on the host: $([ -e "$OTHER_SOCKET" ] && echo visible || echo absent)"
"$FORWARDER" -d 47018 "$OTHER_SOCKET" 2>/dev/null
echo "other route forwarded: $(ask 47018)"
echo "runtime write: $(touch "$RUNTIME/x" 2>&1 | sed 's/.*: //')"
echo "route write: $(touch /run/evalkit/model/x 2>&1 | sed 's/.*: //')"
"""

ports: dict[str, int] = {}
accesses: dict[str, object] = {}
both_open = asyncio.Event()


class RouteProbe(InContainerAgent):
    """Runs the probe from the claude-code tree (any tree has the forwarder) instead of an agent."""

    output = "probe.txt"

    def __init__(self) -> None:
        super().__init__(AgentConfig(name="claude-code", runtime_host_path=SCAFFOLDS["claude-code"].runtime_host_path))
        self.name = "route-probe"

    async def run(self, task, env, *, model, timeout_sec) -> AgentResult:
        accesses[task.name] = model
        if len(accesses) == 2:
            both_open.set()
        await asyncio.wait_for(both_open.wait(), 120)  # both trials' routes exist now
        return await super().run(task, env, model=model, timeout_sec=timeout_sec)

    def command(self, task, route: Route) -> list[str]:
        return ["bash", "-c", Var("PROBE")]

    def environment(self, task, route: Route) -> dict[str, str]:
        other = next(a for name, a in accesses.items() if name != task.name)
        return {"PROBE": PROBE, "KEY": route.api_key, "ROUTE_PORT": str(ROUTE_PORT), "FORWARDER": FORWARDER,
                "RUNTIME": RUNTIME_MOUNT, "UPSTREAM_PORT": str(ports["upstream"]),
                "GATEWAY_PORT": str(urlsplit(accesses[task.name].base_url).port),
                "OTHER_SOCKET": str(other.socket_path)}

    def read_error(self, output: bytes):
        return None


async def test_a_none_container_reaches_its_own_route_and_nothing_else(tmp_path: Path):
    for name in ("a", "b"):
        answer_task(tmp_path / "tasks", name)
    accesses.clear()
    both_open.clear()
    async with FakeUpstream("scripted") as upstream:
        upstream.default = Reply(text="unused")
        ports["upstream"] = upstream.port
        config = job_config(tmp_path, {"name": "tests.agents.test_route:RouteProbe"}, upstream, n_concurrent=2)
        result = await evaluate(config)
    assert len(result.trials) == 2
    for trial in result.trials:
        assert trial.environment.network_mode == "none"
        assert trial.error is None and trial.reward == 0.0  # the probe solves nothing; the verifier still ran
        lines = (result.job_dir / trial.trial_name / "agent" / "probe.txt").read_text().splitlines()
        assert lines == [
            "own route: HTTP/1.0 200 OK",
            "upstream port: refused",
            "gateway tcp port: refused",
            "other route on the host: absent",
            "other route forwarded: no answer",
            "runtime write: Read-only file system",
            "route write: Read-only file system",
        ]


async def test_a_whole_trial_installs_nothing_in_the_container(tmp_path: Path):
    answer_task(tmp_path / "tasks")
    async with FakeUpstream("scripted") as upstream:
        upstream.default = solver()
        config = job_config(tmp_path, {"name": "claude-code"}, upstream, environment={"keep_containers": True})
        result = await evaluate(config)
    assert result.trials[0].reward == 1.0
    async with aiodocker.Docker() as docker:
        (container,) = await docker.containers.list(all=True, filters={"label": [f"evalkit.job={config['job_name']}"]})
        try:
            changed = await changed_paths(container)
        finally:
            await container.delete(force=True)
    # What Docker adds: the mount points (the runtime tree, the route) and its init. What the trial wrote: the
    # task's answer, the logs, scratch in /tmp (the agent's HOME, Claude Code's temp files), the verifier's tests.
    mount_points = {"/opt", "/opt/evalkit", RUNTIME_MOUNT, "/run", "/run/evalkit", "/run/evalkit/model",
                    "/usr", "/usr/sbin", "/usr/sbin/docker-init"}
    assert {p for p in changed if p.startswith(("/opt", "/run", "/usr"))} == mount_points
    assert {p for p in changed if p.startswith("/app")} == {"/app", "/app/answer.txt"}
    rest = sorted(changed - mount_points - {"/app", "/app/answer.txt"})
    assert [p for p in rest if p.split("/")[1] not in ("tmp", "logs", "tests")] == []
    assert f"{LOG_DIR}/claude-code.jsonl" in rest and "/tmp/evalkit-agent" in rest
