"""Agent runtime trees (`evalkit runtime build`) and the model-route forwarder, in real containers.

The three real scaffolds are built through the CLI (cached under ~/.cache/evalkit/runtimes: a no-op once
built); the build machinery's edge cases use a tiny scaffold built from Dockerfiles written by the test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tarfile
import uuid
from pathlib import Path

import aiodocker
import pytest
from aiohttp import web

from evalkit.errors import ConfigError
from evalkit.runtimes import (
    FORWARDER,
    RUNTIMES_DIR,
    SCAFFOLDS,
    STAMP_FILE,
    RuntimeBuildError,
    RuntimeNotReadyError,
    RuntimeStamp,
    Scaffold,
    _unpack,
    build_runtime,
    check_runtime,
    read_stamp,
    scaffold,
)
from tests.conftest import run_cli, write_config
from tests.runtimes.containers import MOUNT_POINTS, changed_paths, minimal_container, run_to_end

pytestmark = pytest.mark.docker

SOCKET_DIR = "/run/evalkit/model"


# --- the scaffolds table and check_runtime -------------------------------------------------------------------


def test_unknown_scaffold_names_the_known_ones():
    with pytest.raises(ConfigError) as exc:
        scaffold("claude")
    assert str(exc.value) == "unknown scaffold 'claude'; known: claude-code, opencode, openhands-sdk"
    cli = run_cli("runtime", "build", "claude")
    assert cli.returncode == 2
    assert cli.stderr.strip() == "evalkit: error: unknown scaffold 'claude'; known: claude-code, opencode, openhands-sdk"


def test_default_image_and_path_follow_the_pin_and_xdg_cache(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    claude = scaffold("claude-code")
    assert claude.runtime_image == f"evalkit/runtime-claude-code:{claude.version}"
    assert claude.runtime_host_path == tmp_path / "evalkit" / "runtimes" / f"claude-code-{claude.version}"
    assert claude.version_command == ["/opt/evalkit/agent/bin/claude", "--version"]


def test_missing_runtime_says_to_build_it(tmp_path: Path):
    oc = scaffold("opencode")
    with pytest.raises(RuntimeNotReadyError) as exc:
        check_runtime(oc, tmp_path / "nowhere", oc.version)
    assert str(exc.value) == (
        f"the opencode runtime is not built: {tmp_path / 'nowhere'} does not exist. Run `evalkit runtime build opencode`."
    )
    assert exc.value.exit_code == 2


def test_half_built_runtime_is_never_used(tmp_path: Path):
    oc = scaffold("opencode")
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "opencode").write_text("half")
    expected = (
        f"the opencode runtime at {tree} is incomplete (no valid {STAMP_FILE}). "
        "Run `evalkit runtime build opencode` to replace it."
    )
    for stamp in (None, "{not json", '{"name": "opencode"}'):
        if stamp is not None:
            (tree / STAMP_FILE).write_text(stamp)
        with pytest.raises(RuntimeNotReadyError) as exc:
            check_runtime(oc, tree, oc.version)
        assert str(exc.value) == expected
    # A valid stamp without the executable is incomplete too.
    (tree / STAMP_FILE).write_text(_stamp("opencode", oc.version).model_dump_json())
    (tree / "bin" / "opencode").unlink()
    with pytest.raises(RuntimeNotReadyError) as exc:
        check_runtime(oc, tree, oc.version)
    assert str(exc.value) == expected


def test_runtime_of_another_version_or_scaffold_is_refused(tmp_path: Path):
    cc = scaffold("claude-code")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "claude").write_text("")
    (tmp_path / STAMP_FILE).write_text(_stamp("claude-code", "2.0.1").model_dump_json())
    with pytest.raises(RuntimeNotReadyError) as exc:
        check_runtime(cc, tmp_path, cc.version)
    assert str(exc.value) == (
        f"the runtime at {tmp_path} holds claude-code 2.0.1, not claude-code {cc.version}. "
        "Run `evalkit runtime build claude-code`."
    )
    with pytest.raises(RuntimeNotReadyError) as exc:
        check_runtime(cc, tmp_path, "2.0.1")
    assert str(exc.value) == (
        f"claude-code 2.0.1 has no runtime build: this evalkit builds claude-code {cc.version} "
        f"(set agent.version to {cc.version})"
    )
    (tmp_path / STAMP_FILE).write_text(_stamp("claude-code", cc.version).model_dump_json())
    assert check_runtime(cc, tmp_path, cc.version).version == cc.version


def test_bad_ca_bundle_is_a_config_error_naming_the_file(tmp_path: Path):
    not_pem = tmp_path / "corp.crt"
    not_pem.write_text("not a certificate\n")
    config = write_config(tmp_path / "config.yaml", {
        "job_name": "runtimes-ca", "dataset": {"path": "tasks"}, "environment": {"ca_bundle": "corp.crt"},
    })
    for args in (["--ca-bundle", str(not_pem)], ["--config", str(config)]):
        cli = run_cli("runtime", "build", "opencode", *args)
        assert cli.returncode == 2, cli.stderr
        assert cli.stderr.strip() == (
            f"evalkit: error: CA bundle {not_pem} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )
    cli = run_cli("runtime", "build", "opencode", "--ca-bundle", str(tmp_path / "absent.crt"))
    assert (cli.returncode, cli.stderr.strip()) == (2, f"evalkit: error: CA bundle not found: {tmp_path / 'absent.crt'}")


def _stamp(name: str, version: str) -> RuntimeStamp:
    return RuntimeStamp(name=name, version=version, dockerfile_digest="0" * 64, image_id="sha256:0",
                        built_at="2026-01-01T00:00:00Z")


# --- the build machinery, on a tiny scaffold ----------------------------------------------------------------

TINY = """\
ARG EVALKIT_BASE
FROM ${{EVALKIT_BASE}} AS build
ARG VERSION
RUN printf '#!/bin/sh\\necho "tiny %s"\\n' "$VERSION" > /opt/evalkit/agent/bin/tiny \\
 && chmod 0755 /opt/evalkit/agent/bin/tiny && ln -s tiny /opt/evalkit/agent/bin/tiny-link \\
 && cp "$SSL_CERT_FILE" /opt/evalkit/agent/trusted.crt
RUN echo {marker}
FROM scratch
COPY --from=build /opt/evalkit/agent /opt/evalkit/agent
"""


def tiny_scaffold(root: Path, *, step: str = "true", version: str = "1.0") -> Scaffold:
    """A scaffold `tiny` built from Dockerfiles under root (the repo's base stage and forwarder, and a
    Dockerfile of a few lines); `step` is one more RUN step (a failure, a sleep)."""
    dockerfiles = root / "dockerfiles"
    if not dockerfiles.exists():
        for part in ("base", "forwarder"):
            shutil.copytree(RUNTIMES_DIR / part, dockerfiles / part)
    (dockerfiles / "tiny").mkdir(exist_ok=True)
    marker = f"runtimes-test-{uuid.uuid4().hex[:12]} && {step}"
    (dockerfiles / "tiny" / "Dockerfile").write_text(TINY.format(marker=marker))
    return Scaffold(name="tiny", version=version, executable="bin/tiny", dockerfiles=dockerfiles)


@pytest.fixture
async def docker():
    async with aiodocker.Docker() as client:
        yield client


def leftovers(host_path: Path) -> list[str]:
    """Anything beside the tree but the tree, its build log and its lock file."""
    keep = {host_path.name, f"{host_path.name}.build.log", f".{host_path.name}.lock"}
    return sorted(p.name for p in host_path.parent.iterdir() if p.name not in keep)


async def test_build_extracts_a_stamped_tree_and_is_idempotent(docker, tmp_path: Path):
    tiny = tiny_scaffold(tmp_path)
    host_path = tmp_path / "trees" / "tiny-1.0"
    lines: list[str] = []
    stamp, built = await build_runtime(docker, tiny, image="evalkit/runtime-test-tiny:1", host_path=host_path,
                                       report=lines.append)
    assert built
    assert read_stamp(host_path) == stamp
    assert (stamp.name, stamp.version) == ("tiny", "1.0")
    assert stamp.image_id == (await docker.images.inspect("evalkit/runtime-test-tiny:1"))["Id"]
    assert check_runtime(tiny, host_path, "1.0") == stamp
    assert (host_path / "bin" / "tiny").read_text() == '#!/bin/sh\necho "tiny 1.0"\n'
    assert os.readlink(host_path / "bin" / "tiny-link") == "tiny"
    assert (host_path / "bin" / "evalkit-forward").stat().st_mode & 0o111
    assert oct(host_path.stat().st_mode & 0o777) == "0o755"
    assert any("Step " in line for line in lines) and lines[-1].startswith("built tiny 1.0 in ")
    assert leftovers(host_path) == []

    lines.clear()
    again, built = await build_runtime(docker, tiny, image="evalkit/runtime-test-tiny:1", host_path=host_path,
                                       report=lines.append)
    assert (again, built) == (stamp, False)
    assert lines == [f"tiny 1.0 is up to date in {host_path}"]

    forced, built = await build_runtime(docker, tiny, image="evalkit/runtime-test-tiny:1", host_path=host_path,
                                        force=True, report=lines.append)
    assert built and forced.built_at > stamp.built_at
    assert read_stamp(host_path) == forced
    assert leftovers(host_path) == []


async def test_two_builds_of_one_tree_wait_for_each_other(docker, tmp_path: Path):
    tiny = tiny_scaffold(tmp_path)
    host_path = tmp_path / "trees" / "tiny-1.0"
    reports: list[list[str]] = [[], []]
    results = await asyncio.gather(*(
        build_runtime(docker, tiny, image="evalkit/runtime-test-tiny:1", host_path=host_path, report=lines.append)
        for lines in reports
    ))
    assert sorted(built for _, built in results) == [False, True]
    assert results[0][0] == results[1][0] == read_stamp(host_path)
    waited = reports[[built for _, built in results].index(False)]
    assert waited == [f"waiting for another build of {host_path} to finish", f"tiny 1.0 is up to date in {host_path}"]
    assert leftovers(host_path) == []


async def test_ca_bundle_is_trusted_by_the_build_and_not_shipped(docker, tmp_path: Path):
    system = Path("/etc/ssl/certs/ca-certificates.crt").read_text()
    first = system[: system.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")]
    bundle = "# corporate root\n" + first[first.index("-----BEGIN CERTIFICATE-----"):]
    tiny = tiny_scaffold(tmp_path)
    host_path = tmp_path / "trees" / "tiny-1.0"
    await build_runtime(docker, tiny, image="evalkit/runtime-test-tiny:1", host_path=host_path,
                        ca_bundle=bundle.encode(), report=lambda _: None)
    trusted = (host_path / "trusted.crt").read_text()  # the tiny Dockerfile copied $SSL_CERT_FILE into the tree
    assert trusted.endswith(bundle) and trusted.count("BEGIN CERTIFICATE") > 50  # Debian's roots + the given one
    history = await docker._query_json(f"images/{(await docker.images.inspect('evalkit/runtime-test-tiny:1'))['Id']}/history")
    assert not any("ca-bundle" in (layer.get("CreatedBy") or "") for layer in history)  # FROM scratch: only the tree


async def rebuild_over_a_good_tree(docker, tmp_path: Path, step: str) -> tuple[Path, RuntimeStamp, RuntimeBuildError]:
    """Build a good tiny tree, then force a rebuild whose Dockerfile adds `step`; the rebuild's error."""
    host_path = tmp_path / "trees" / "tiny-1.0"
    good, _ = await build_runtime(docker, tiny_scaffold(tmp_path), image="evalkit/runtime-test-tiny:1",
                                  host_path=host_path, report=lambda _: None)
    with pytest.raises(RuntimeBuildError) as exc:
        await build_runtime(docker, tiny_scaffold(tmp_path, step=step), image="evalkit/runtime-test-tiny:1",
                            host_path=host_path, report=lambda _: None)
    return host_path, good, exc.value


async def test_failed_build_keeps_the_previous_tree(docker, tmp_path: Path):
    host_path, good, error = await rebuild_over_a_good_tree(docker, tmp_path, "echo npm ERR! 404 >&2 && exit 3")
    message = str(error)
    assert message.startswith("building evalkit/runtime-test-tiny:1 from runtimes/tiny/Dockerfile failed: ")
    assert "returned a non-zero code: 3" in message and "npm ERR! 404" in message
    assert error.exit_code == 3
    assert read_stamp(host_path) == good
    assert leftovers(host_path) == []
    assert "npm ERR! 404" in (host_path.parent / "tiny-1.0.build.log").read_text()


async def test_interrupted_build_keeps_the_previous_tree_and_leaves_nothing(docker, tmp_path: Path):
    host_path = tmp_path / "trees" / "tiny-1.0"
    good, _ = await build_runtime(docker, tiny_scaffold(tmp_path), image="evalkit/runtime-test-tiny:1",
                                  host_path=host_path, report=lambda _: None)
    marker = f"interrupt-{uuid.uuid4().hex[:8]}"
    slow = tiny_scaffold(tmp_path, step=f"echo {marker} && sleep 300")
    started = asyncio.Event()

    def report(line: str) -> None:
        if marker in line:
            started.set()

    build = asyncio.create_task(build_runtime(docker, slow, image="evalkit/runtime-test-tiny:1",
                                              host_path=host_path, report=report))
    await asyncio.wait_for(started.wait(), 300)
    build.cancel()
    with pytest.raises(asyncio.CancelledError):
        await build
    assert read_stamp(host_path) == good
    assert leftovers(host_path) == []
    for _ in range(100):  # the engine removes the interrupted step's container once it sees the client gone
        running = [c for c in await docker.containers.list(all=True) if marker in " ".join(c._container.get("Command", ""))]
        if not running:
            break
        await asyncio.sleep(0.2)
    assert running == []


async def test_tree_with_a_fifo_is_refused_and_the_previous_tree_kept(docker, tmp_path: Path):
    host_path, good, error = await rebuild_over_a_good_tree(docker, tmp_path, "mkfifo /opt/evalkit/agent/bin/pipe")
    assert str(error) == "refusing runtime archive entry 'agent/bin/pipe': not a file, directory or link"
    assert read_stamp(host_path) == good
    assert leftovers(host_path) == []
    assert await docker.containers.list(all=True, filters={"label": ["evalkit.runtime=tiny"]}) == []


@pytest.mark.parametrize(
    ("name", "kind", "error"),
    [
        ("/etc/passwd", tarfile.REGTYPE, "refusing runtime archive entry '/etc/passwd': outside /opt/evalkit/agent"),
        ("agent/../../x", tarfile.REGTYPE, "refusing runtime archive entry 'agent/../../x': outside /opt/evalkit/agent"),
        ("other/x", tarfile.REGTYPE, "refusing runtime archive entry 'other/x': outside /opt/evalkit/agent"),
        ("agent/dev", tarfile.CHRTYPE, "refusing runtime archive entry 'agent/dev': not a file, directory or link"),
    ],
)
def test_unpack_refuses_entries_outside_the_tree(tmp_path: Path, name: str, kind: bytes, error: str):
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        tar.addfile(info)
    with pytest.raises(RuntimeBuildError) as exc:
        _unpack(archive, tmp_path / "tree")
    assert str(exc.value) == error
    assert not (tmp_path / "x").exists() and not Path("/x").exists()


def test_unpack_refuses_links_out_of_the_tree(tmp_path: Path):
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        link = tarfile.TarInfo("agent/bin/escape")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/shadow"
        tar.addfile(link)
    with pytest.raises(RuntimeBuildError) as exc:
        _unpack(archive, tmp_path / "tree")
    message = str(exc.value)
    assert message.startswith("refusing runtime archive entry 'bin/escape' would link to '")
    assert message.endswith("/etc/shadow', which is outside the destination")
    assert not (tmp_path / "tree" / "bin" / "escape").exists()


# --- the real scaffolds --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_trees() -> dict[str, Path]:
    """Every scaffold's tree, built by the CLI (a no-op when current)."""
    for name in SCAFFOLDS:
        cli = run_cli("runtime", "build", name, timeout=3600)
        assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-3000:]
    return {name: s.runtime_host_path for name, s in SCAFFOLDS.items()}


def test_cli_build_of_a_current_tree_is_a_no_op_and_list_shows_it(real_trees):
    for name, s in SCAFFOLDS.items():
        before = read_stamp(real_trees[name])
        cli = run_cli("runtime", "build", name)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip() == f"{name} {s.version} is up to date in {real_trees[name]}"
        assert read_stamp(real_trees[name]) == before
    listing = run_cli("runtime", "list").stdout.splitlines()
    assert listing[0].split() == ["NAME", "VERSION", "STATUS", "PATH"]
    assert sorted(line.split()[:3] for line in listing[1:]) == sorted([n, s.version, "current"] for n, s in SCAFFOLDS.items())


@pytest.mark.parametrize("name", list(SCAFFOLDS))
async def test_scaffold_prints_its_version_from_a_read_only_mount_with_nothing_installed(docker, real_trees, name):
    s = SCAFFOLDS[name]
    write = f"touch {os.path.dirname(s.version_command[0])}/x 2>&1 || echo read-only"
    async with minimal_container(docker, real_trees[name], ["bash", "-c", f'"$@"; {write}', "-", *s.version_command]) as c:
        code, out, err = await run_to_end(c)
        assert code == 0, err
        assert out.splitlines()[0].startswith(s.version), out
        assert out.splitlines()[-1] == "read-only"
        assert await changed_paths(c) <= MOUNT_POINTS


async def test_openhands_python_has_ssl_sqlite_ctypes_without_libraries_in_the_container(docker, real_trees):
    code = (
        "import ssl, sqlite3, ctypes, lzma, bz2, zlib, uuid, sys; "
        "import openhands.sdk, openhands.tools; "
        "print(sys.version_info[:2] >= (3, 12), ssl.OPENSSL_VERSION.split()[0], sqlite3.sqlite_version_info >= (3,), "
        "ctypes.CDLL(None) is not None, sys.prefix)"
    )
    env = ["OPENHANDS_SUPPRESS_BANNER=1"]  # no PYTHONHOME, no LD_LIBRARY_PATH: the tree finds its own stdlib and libraries
    async with minimal_container(docker, real_trees["openhands-sdk"], ["/opt/evalkit/agent/bin/python", "-c", code],
                                 env=env) as c:
        status, out, err = await run_to_end(c, timeout=300)
        assert status == 0, err
        assert out.split() == ["True", "OpenSSL", "True", "True", "/opt/evalkit/agent/python"]
        assert await changed_paths(c) <= MOUNT_POINTS
    # And the container has no libssl of its own: the tree's copy is what ssl loaded.
    async with minimal_container(docker, real_trees["openhands-sdk"],
                                 ["bash", "-c", "ls /usr/lib/x86_64-linux-gnu/libssl.so.3 2>&1"]) as c:
        _, out, _ = await run_to_end(c)
        assert "No such file" in out


# --- the forwarder -------------------------------------------------------------------------------------------


class ModelServer:
    """A real HTTP server on a host Unix socket (and, to prove it unreachable, on a loopback TCP port)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "model.sock"
        self.release = asyncio.Event()
        self.requests: list[tuple[str, bytes]] = []

    async def hello(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((request.path, body))
        return web.json_response({"echo": body.decode(), "path": request.path})

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await asyncio.wait_for(self.release.wait(), 60)  # the test sees "first" in the container before this
        await response.write(b"data: second\n\n")
        await response.write_eof()
        return response

    async def __aenter__(self) -> ModelServer:
        app = web.Application()
        app.router.add_post("/v1/hello", self.hello)
        app.router.add_get("/v1/stream", self.stream)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        unix = web.UnixSite(self.runner, str(self.socket))
        await unix.start()
        self.socket.chmod(0o666)
        tcp = web.TCPSite(self.runner, "127.0.0.1", 0)
        await tcp.start()
        self.tcp_port = tcp._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        await self.runner.cleanup()


@pytest.fixture
def socket_dir():
    """A short host directory for the socket (AF_UNIX paths are limited to 107 bytes)."""
    path = Path(f"/tmp/evalkit-rt-{uuid.uuid4().hex[:8]}")
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path)


def _http(request_line: str, body: str = "") -> str:
    """A bash snippet that sends one raw HTTP/1.1 request to the forwarder (port 8765) and prints the answer."""
    head = request_line + r"\r\nHost: x\r\nConnection: close\r\n"
    if body:
        head += f"Content-Length: {len(body)}" + r"\r\n"
    return "exec 3<>/dev/tcp/127.0.0.1/8765 && printf '%b' " + f"'{head}' " + r"'\r\n'" + f" '{body}' >&3 && cat <&3"


async def test_forwarder_relays_requests_and_streams_from_a_none_container(docker, tmp_path, socket_dir):
    tree = await _forwarder_tree(docker, tmp_path)
    async with ModelServer(socket_dir) as server:
        body = '{"model": "m"}'
        script = "; ".join([
            f"{FORWARDER} -d 8765 {SOCKET_DIR}/model.sock || exit 9",
            _http("POST /v1/hello HTTP/1.1", body), "echo", "echo ===",
            _http("GET /v1/stream HTTP/1.1"), "echo", "echo ===",
            f"(exec 4<>/dev/tcp/127.0.0.1/{server.tcp_port}) 2>/dev/null && echo host-port-reachable || echo host-port-refused",
        ])
        async with minimal_container(docker, tree, ["bash", "-c", script], binds=[f"{socket_dir}:{SOCKET_DIR}:ro"]) as c:
            seen = ""
            async for chunk in c.log(stdout=True, follow=True):
                seen += chunk
                if "data: first" in seen and not server.release.is_set():
                    assert "data: second" not in seen  # the first chunk arrived on its own
                    server.release.set()
            code, out, err = await run_to_end(c)
    assert code == 0, err
    hello, stream, probe = out.split("\n===\n")
    assert hello.startswith("HTTP/1.1 200 OK")
    assert json.loads(hello.split("\r\n\r\n", 1)[1]) == {"echo": body, "path": "/v1/hello"}
    assert server.requests == [("/v1/hello", body.encode())]
    assert stream.startswith("HTTP/1.1 200 OK") and stream.index("data: first") < stream.index("data: second")
    assert probe.strip() == "host-port-refused"


async def test_forwarder_relays_at_most_n_connections_at_once(docker, tmp_path, socket_dir):
    tree = await _forwarder_tree(docker, tmp_path)
    request = r"POST /v1/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    script = "; ".join([
        f"{FORWARDER} -d -n 1 8765 {SOCKET_DIR}/model.sock || exit 9",
        "exec 3<>/dev/tcp/127.0.0.1/8765",  # A: takes the only relay and sends nothing
        "exec 4<>/dev/tcp/127.0.0.1/8765",  # B: waits in the listen backlog
        f"printf '%b' '{request}' >&4",
        "timeout 2 cat <&4; echo B-while-A-open=$?",
        "echo relays=$(grep -lx evalkit-forward /proc/[0-9]*/comm 2>/dev/null | wc -l)",
        "exec 3>&-",  # A hangs up: its relay ends and B is accepted
        "timeout 20 cat <&4 | head -1",
    ])
    async with ModelServer(socket_dir) as server:
        async with minimal_container(docker, tree, ["bash", "-c", script], binds=[f"{socket_dir}:{SOCKET_DIR}:ro"]) as c:
            code, out, err = await run_to_end(c)
    assert code == 0, err
    assert out.splitlines() == ["B-while-A-open=124", "relays=2", "HTTP/1.1 200 OK"]  # the listener + one relay
    assert server.requests == [("/v1/hello", b"hi")]


async def test_forwarder_without_its_socket_closes_the_connection_and_logs_one_line(docker, tmp_path, socket_dir):
    tree = await _forwarder_tree(docker, tmp_path)
    script = f"{FORWARDER} -d 8765 {SOCKET_DIR}/model.sock || exit 9; exec 3<>/dev/tcp/127.0.0.1/8765 && cat <&3; echo closed=$?; sleep 0.2"
    async with minimal_container(docker, tree, ["bash", "-c", script], binds=[f"{socket_dir}:{SOCKET_DIR}:ro"]) as c:
        code, out, err = await run_to_end(c)
    assert code == 0
    assert out.strip() == "closed=0"
    assert err.splitlines() == [f"evalkit-forward: cannot reach {SOCKET_DIR}/model.sock: No such file or directory"]


async def test_forwarder_refuses_bad_arguments(docker, tmp_path):
    tree = await _forwarder_tree(docker, tmp_path)
    script = f"{FORWARDER}; echo rc=$?; {FORWARDER} 70000; echo rc=$?; {FORWARDER} -d 8765 && {FORWARDER} 8765; echo rc=$?"
    async with minimal_container(docker, tree, ["bash", "-c", script]) as c:
        _, out, err = await run_to_end(c)
    assert out.split() == ["rc=2", "rc=2", "rc=1"]
    assert err.splitlines() == [
        "usage: evalkit-forward [-d] [-n MAX] PORT [SOCKET]",
        "usage: evalkit-forward [-d] [-n MAX] PORT [SOCKET]",
        "evalkit-forward: cannot listen on 127.0.0.1:8765: Address in use",
    ]


async def _forwarder_tree(docker: aiodocker.Docker, tmp_path: Path) -> Path:
    """A tree holding the forwarder as every runtime build makes it (the tiny scaffold's; cached after the
    first build)."""
    host_path = tmp_path / "forwarder-tree"
    await build_runtime(docker, tiny_scaffold(tmp_path / "fw"), image="evalkit/runtime-test-tiny:fw",
                        host_path=host_path, report=lambda _: None)
    return host_path
