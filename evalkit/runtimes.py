"""Agent runtime trees: each in-container scaffold runs from a prepared tree mounted read-only at
`/opt/evalkit/agent`, so nothing is installed in a trial's container.

A tree is built once per pinned version by `evalkit runtime build NAME`: the scaffold's Dockerfile in the
repo's `runtimes/` (on a shared base stage that carries the CA bundle and the model-route forwarder) is built
through the Engine API, and the image's `/opt/evalkit/agent` is extracted into `runtime_host_path`. The tree
is assembled in a temp directory beside its destination, stamped last (`.evalkit-runtime.json`), then
swapped into place in one rename, so a failed or interrupted build leaves the previous tree as it was, and
a tree without a valid stamp is never used.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import aiodocker
from pydantic import BaseModel, ConfigDict, ValidationError

from evalkit.cleanup import uncancellable
from evalkit.environments.images import build_image, context_hash, tar_directory
from evalkit.errors import ConfigError, InfrastructureError, read_user_file

RUNTIME_MOUNT = "/opt/evalkit/agent"
"""Where every runtime tree is mounted (read-only) in a trial's container, and where it lives in its image."""
FORWARDER = f"{RUNTIME_MOUNT}/bin/evalkit-forward"
"""The model-route forwarder in every tree: `evalkit-forward [-d] [-n MAX] PORT [SOCKET]`."""
STAMP_FILE = ".evalkit-runtime.json"
RUNTIMES_DIR = Path(__file__).resolve().parents[1] / "runtimes"
"""The repo's Dockerfiles: `base/` (shared stage), `forwarder/`, and one directory per scaffold."""
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the engine colours a step's stderr


def runtimes_cache_dir() -> Path:
    """Where trees go by default: `$XDG_CACHE_HOME/evalkit/runtimes`, else `~/.cache/evalkit/runtimes`."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "evalkit" / "runtimes"


class Scaffold(BaseModel):
    """An in-container agent whose runtime tree evalkit builds."""

    model_config = ConfigDict(frozen=True)

    name: str
    """The scaffold's name in `agent.name` and on the command line."""
    version: str
    """The exact version the repo's Dockerfile builds (passed to it as the `VERSION` build argument)."""
    executable: str
    """The agent's executable, relative to the tree's root."""
    version_args: tuple[str, ...] = ("--version",)
    """Arguments that make the executable print the scaffold's version and exit."""
    dockerfiles: Path = RUNTIMES_DIR
    """The directory holding `base/`, `forwarder/` and this scaffold's `<name>/Dockerfile`."""

    @property
    def runtime_image(self) -> str:
        """The default image tag the tree is built as."""
        return f"evalkit/runtime-{self.name}:{self.version}"

    @property
    def runtime_host_path(self) -> Path:
        """The default host directory of the tree."""
        return runtimes_cache_dir() / f"{self.name}-{self.version}"

    @property
    def version_command(self) -> list[str]:
        """The command, inside a container with the tree mounted, that prints the version."""
        return [f"{RUNTIME_MOUNT}/{self.executable}", *self.version_args]


SCAFFOLDS: dict[str, Scaffold] = {
    s.name: s
    for s in (
        Scaffold(name="claude-code", version="2.1.332", executable="bin/claude"),
        Scaffold(name="opencode", version="1.18.33", executable="bin/opencode"),
        Scaffold(
            name="openhands-sdk",
            version="1.58.2",
            executable="bin/python",
            version_args=("-c", "import importlib.metadata as m; print(m.version('openhands-sdk'))"),
        ),
    )
}


def scaffold(name: str) -> Scaffold:
    """The scaffold called `name`; a ConfigError naming the known ones otherwise."""
    try:
        return SCAFFOLDS[name]
    except KeyError:
        raise ConfigError(f"unknown scaffold {name!r}; known: {', '.join(SCAFFOLDS)}") from None


class RuntimeStamp(BaseModel):
    """`.evalkit-runtime.json`, written last into a tree: its presence means the tree is complete."""

    model_config = ConfigDict(extra="forbid")

    name: str
    """The scaffold the tree runs."""
    version: str
    """The scaffold's version in the tree."""
    dockerfile_digest: str
    """sha256 over the Dockerfiles and files the tree was built from (see `dockerfile_digest`)."""
    image_id: str
    """The image the tree was extracted from."""
    built_at: datetime


class RuntimeNotReadyError(ConfigError):
    """A scaffold's runtime tree is missing, half-built or of another version: run `evalkit runtime build`."""


class RuntimeBuildError(InfrastructureError):
    """Building or extracting a runtime tree failed; the previous tree (if any) is untouched."""


def dockerfile_digest(scaffold: Scaffold) -> str:
    """What a tree is built from: the base stage, the forwarder, the scaffold's directory and its pin."""
    digest = hashlib.sha256(scaffold.version.encode())
    for part in (scaffold.dockerfiles / "base", scaffold.dockerfiles / "forwarder", scaffold.dockerfiles / scaffold.name):
        digest.update(f"\0{part.name}\0{context_hash(part)}".encode())
    return digest.hexdigest()


def read_stamp(host_path: Path) -> RuntimeStamp | None:
    """The tree's stamp, or None when there is no valid one (missing, unreadable, not a stamp)."""
    try:
        return RuntimeStamp.model_validate_json((host_path / STAMP_FILE).read_bytes())
    except (OSError, ValidationError):
        return None


def check_runtime(scaffold: Scaffold, host_path: Path, version: str) -> RuntimeStamp:
    """The stamp of a complete tree of `scaffold` at `version` in `host_path`; RuntimeNotReadyError otherwise,
    saying what to run. Call it once before the first trial (it reads one small file)."""
    build = f"Run `evalkit runtime build {scaffold.name}`"
    if version != scaffold.version:
        raise RuntimeNotReadyError(
            f"{scaffold.name} {version} has no runtime build: this evalkit builds {scaffold.name} "
            f"{scaffold.version} (set agent.version to {scaffold.version})"
        )
    if not host_path.is_dir():
        raise RuntimeNotReadyError(f"the {scaffold.name} runtime is not built: {host_path} does not exist. {build}.")
    stamp = read_stamp(host_path)
    if stamp is None or not (host_path / scaffold.executable).is_file():
        raise RuntimeNotReadyError(
            f"the {scaffold.name} runtime at {host_path} is incomplete (no valid {STAMP_FILE}). "
            f"{build} to replace it."
        )
    if (stamp.name, stamp.version) != (scaffold.name, version):
        raise RuntimeNotReadyError(
            f"the runtime at {host_path} holds {stamp.name} {stamp.version}, not {scaffold.name} {version}. {build}."
        )
    return stamp


def runtime_status(scaffold: Scaffold, host_path: Path) -> str:
    """One word or phrase for `evalkit runtime list`."""
    if not host_path.exists():
        return "not built"
    stamp = read_stamp(host_path)
    if stamp is None:
        return "incomplete"
    if (stamp.name, stamp.version) != (scaffold.name, scaffold.version):
        return f"holds {stamp.name} {stamp.version}"
    if stamp.dockerfile_digest != dockerfile_digest(scaffold):
        return "outdated (Dockerfiles changed)"
    return "current"


async def build_runtime(
    client: aiodocker.Docker,
    scaffold: Scaffold,
    *,
    image: str | None = None,
    host_path: Path | None = None,
    ca_bundle: bytes = b"",
    force: bool = False,
    report: Callable[[str], None] = print,
) -> tuple[RuntimeStamp, bool]:
    """Build `scaffold`'s tree into `host_path` (default: the scaffold's) unless a current one is there.

    Returns the tree's stamp and whether it was (re)built. `ca_bundle` (PEM) is trusted by the build's
    downloads besides Debian's public roots. `report` receives progress lines. Concurrent builds of one
    path wait for each other (a lock file beside it).
    """
    image = image or scaffold.runtime_image
    host_path = (host_path or scaffold.runtime_host_path).absolute()
    digest = await asyncio.to_thread(dockerfile_digest, scaffold)
    async with _locked(host_path, report):
        current = await asyncio.to_thread(read_stamp, host_path)
        if not force and current is not None and current.model_dump(include={"name", "version", "dockerfile_digest"}) == {
            "name": scaffold.name, "version": scaffold.version, "dockerfile_digest": digest
        }:
            report(f"{scaffold.name} {scaffold.version} is up to date in {host_path}")
            return current, False
        started = time.monotonic()
        log_path = host_path.parent / f"{host_path.name}.build.log"
        await build_runtime_image(client, scaffold, image=image, ca_bundle=ca_bundle, report=report,
                                  log_path=log_path, labels={"evalkit.runtime.digest": digest})
        image_id = (await client.images.inspect(image))["Id"]
        stamp = RuntimeStamp(name=scaffold.name, version=scaffold.version, dockerfile_digest=digest,
                             image_id=image_id, built_at=datetime.now(timezone.utc))
        report(f"extracting {RUNTIME_MOUNT} from {image} into {host_path}")
        await _extract(client, image, host_path, stamp)
        report(f"built {scaffold.name} {scaffold.version} in {time.monotonic() - started:.0f} s: {host_path}")
        return stamp, True


async def build_runtime_image(
    client: aiodocker.Docker,
    scaffold: Scaffold,
    *,
    image: str,
    ca_bundle: bytes = b"",
    report: Callable[[str], None] = print,
    log_path: Path | None = None,
    labels: dict[str, str] | None = None,
) -> None:
    """Build the scaffold's Dockerfile as `image`, on the shared base stage (built first); the build's
    output goes to `log_path`."""
    context = await asyncio.to_thread(_build_context, scaffold.dockerfiles, ca_bundle)
    log: list[str] = []
    try:
        base = await _build_base(client, scaffold.dockerfiles, context, ca_bundle, log, report)
        labels = {"evalkit.runtime": scaffold.name, "evalkit.runtime.version": scaffold.version, **(labels or {})}
        params = {"t": image, "dockerfile": f"{scaffold.name}/Dockerfile", "labels": json.dumps(labels),
                  "buildargs": json.dumps({"EVALKIT_BASE": base, "VERSION": scaffold.version})}
        await _build_step(client, context, params, log, report)
    finally:
        if log_path is not None:
            await uncancellable(asyncio.to_thread(log_path.write_text, "".join(log)))


async def build_base_image(
    client: aiodocker.Docker, *, ca_bundle: bytes = b"", report: Callable[[str], None] = print
) -> str:
    """Build the shared base stage alone (Debian with node and npm, the CA bundle trusted); its tag."""
    context = await asyncio.to_thread(_build_context, RUNTIMES_DIR, ca_bundle)
    return await _build_base(client, RUNTIMES_DIR, context, ca_bundle, [], report)


async def _build_base(
    client: aiodocker.Docker, dockerfiles: Path, context: bytes, ca_bundle: bytes, log: list[str],
    report: Callable[[str], None],
) -> str:
    tag = await asyncio.to_thread(_base_tag, dockerfiles, ca_bundle)
    await _build_step(client, context, {"t": tag, "dockerfile": "base/Dockerfile"}, log, report)
    return tag


def _base_tag(dockerfiles: Path, ca_bundle: bytes) -> str:
    """The shared base stage, named by what goes into it (its Dockerfile, the forwarder, the CA bundle)."""
    digest = hashlib.sha256(ca_bundle)
    for part in (dockerfiles / "base", dockerfiles / "forwarder"):
        digest.update(context_hash(part).encode())
    return f"evalkit/runtime-base:{digest.hexdigest()[:20]}"


def _build_context(dockerfiles: Path, ca_bundle: bytes) -> bytes:
    """The build context of every runtime build: the Dockerfiles' directory plus the CA bundle as `ca-bundle.crt`."""
    with tempfile.TemporaryDirectory(prefix="evalkit-runtime-context-") as staging:
        root = Path(staging) / "context"
        shutil.copytree(dockerfiles, root)
        (root / "ca-bundle.crt").write_bytes(ca_bundle)
        return tar_directory(root)


async def _build_step(
    client: aiodocker.Docker, context: bytes, params: dict[str, str], log: list[str], report: Callable[[str], None]
) -> None:
    """One image build; Dockerfile steps are reported as they start, and a long one is reported while it runs."""
    tag, dockerfile = params["t"], params["dockerfile"]
    step = {"name": "", "since": time.monotonic()}

    def on_output(line: str) -> None:
        log.append(line)
        if line.startswith("Step "):
            _finish_step(step, report)
            step.update(name=line.strip()[:110], since=time.monotonic())
            report(f"  [{tag}] {step['name']}")

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(30)
            running = time.monotonic() - step["since"]
            if step["name"] and running >= 30:
                tail = _ANSI.sub("", "".join(log[-20:])).strip().splitlines()
                report(f"    … {running:.0f} s: {tail[-1][:100] if tail else ''}")

    async with asyncio.TaskGroup() as group:
        ticker = group.create_task(heartbeat())
        try:
            error = await build_image(client, context, params, on_output)
        finally:
            ticker.cancel()
    _finish_step(step, report)
    if error is not None:
        tail = "\n".join(_ANSI.sub("", "".join(log)).strip().splitlines()[-8:])
        raise RuntimeBuildError(f"building {tag} from runtimes/{dockerfile} failed: {error}\n{tail}")


def _finish_step(step: dict, report: Callable[[str], None]) -> None:
    took = time.monotonic() - step["since"]
    if step["name"] and took >= 5:
        report(f"    done in {took:.0f} s")
    step["name"] = ""


@contextlib.asynccontextmanager
async def _locked(host_path: Path, report: Callable[[str], None]) -> AsyncIterator[None]:
    """Hold `.<name>.lock` beside the tree; a second build of the same path waits for the first."""
    await asyncio.to_thread(host_path.parent.mkdir, parents=True, exist_ok=True)
    fd = await asyncio.to_thread(os.open, host_path.parent / f".{host_path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waiting = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting:
                    report(f"waiting for another build of {host_path} to finish")
                    waiting = True
                await asyncio.sleep(0.5)
        # Leftovers of a build that was killed outright (SIGKILL, power loss): no build of this path runs now.
        for stale in host_path.parent.glob(f".{host_path.name}.building-*"):
            await asyncio.to_thread(shutil.rmtree, stale, True)
        yield
    finally:
        os.close(fd)  # releases the lock


async def _extract(client: aiodocker.Docker, image: str, host_path: Path, stamp: RuntimeStamp) -> None:
    """Copy the image's tree into a temp directory beside `host_path`, stamp it, swap it into place."""
    work = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=f".{host_path.name}.building-", dir=host_path.parent))
    container = None
    try:
        container = await client.containers.create(
            {"Image": image, "Cmd": [FORWARDER], "NetworkDisabled": True, "Labels": {"evalkit.runtime": stamp.name}}
        )
        archive = work / "tree.tar"
        with await asyncio.to_thread(archive.open, "wb") as out:
            async with client._query(f"containers/{container.id}/archive", params={"path": RUNTIME_MOUNT}) as response:
                async for chunk in response.content.iter_chunked(1 << 20):
                    await asyncio.to_thread(out.write, chunk)
        tree = work / "tree"
        await asyncio.to_thread(_unpack, archive, tree)
        await asyncio.to_thread((tree / STAMP_FILE).write_text, stamp.model_dump_json(indent=2) + "\n")
        await asyncio.to_thread(_swap_into_place, tree, host_path)
    except aiodocker.DockerError as exc:
        raise RuntimeBuildError(f"extracting {RUNTIME_MOUNT} from {image} failed: {exc.message}") from None
    finally:
        await uncancellable(_discard(client, container, work))


async def _discard(client: aiodocker.Docker, container: aiodocker.containers.DockerContainer | None, work: Path) -> None:
    if container is not None:
        with contextlib.suppress(aiodocker.DockerError):
            await container.delete(force=True)
    await asyncio.to_thread(shutil.rmtree, work, True)


def _unpack(archive: Path, tree: Path) -> None:
    """Extract the archive of `/opt/evalkit/agent` (entries `agent/...`) into `tree`, refusing anything that is
    not a plain file, directory or link inside the tree."""
    root = PurePosixPath(RUNTIME_MOUNT).name

    def only_the_tree(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or path.parts[:1] != (root,):
            raise RuntimeBuildError(f"refusing runtime archive entry {member.name!r}: outside {RUNTIME_MOUNT}")
        if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
            raise RuntimeBuildError(f"refusing runtime archive entry {member.name!r}: not a file, directory or link")
        relative = PurePosixPath(*path.parts[1:]).as_posix() if len(path.parts) > 1 else "."
        if member.islnk():
            link = PurePosixPath(member.linkname)
            member = member.replace(linkname=PurePosixPath(*link.parts[1:]).as_posix(), deep=False)
        return tarfile.data_filter(member.replace(name=relative, deep=False), dest)

    with tarfile.open(archive) as tar:
        try:
            tar.extractall(tree, filter=only_the_tree)
        except tarfile.FilterError as exc:  # the data filter's own checks: links out of the tree, odd modes
            raise RuntimeBuildError(f"refusing runtime archive entry {exc}") from None
    tree.chmod(0o755)  # mkdtemp's 0700 would hide the tree from a non-root container user


_RENAME_EXCHANGE = 2


def _swap_into_place(tree: Path, host_path: Path) -> None:
    """Make `tree` the one at `host_path` in a single step; the replaced tree (if any) is then deleted."""
    if not host_path.exists() and not host_path.is_symlink():
        os.rename(tree, host_path)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(tree), at_fdcwd, os.fsencode(host_path), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise RuntimeBuildError(f"cannot swap the new tree into {host_path}: {os.strerror(code)} ({errno.errorcode.get(code)})")
    shutil.rmtree(tree)  # now the previous tree


def read_ca_bundle(path: Path | None) -> bytes:
    """The PEM bundle a build trusts besides Debian's roots: `path`, else `$SSL_CERT_FILE` (what this host's
    own TLS clients trust), else none. A file that is missing or holds no certificate is a ConfigError."""
    if path is None and os.environ.get("SSL_CERT_FILE"):
        path = Path(os.environ["SSL_CERT_FILE"])
    if path is None:
        return b""
    bundle = read_user_file(path, "CA bundle")
    if b"-----BEGIN CERTIFICATE-----" not in bundle:
        raise ConfigError(f"CA bundle {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return bundle


# --- `evalkit runtime …` --------------------------------------------------------------------------------------


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("runtime", help="build and list agent runtime trees (mounted into containers)")
    commands = parser.add_subparsers(dest="runtime_command", required=True)
    build = commands.add_parser("build", help="build a scaffold's runtime tree from its pinned Dockerfile")
    build.add_argument("name", help=f"the scaffold: {', '.join(SCAFFOLDS)}")
    build.add_argument("--config", type=Path, help="a job config: its environment.ca_bundle and docker_host apply")
    build.add_argument("--force", action="store_true", help="rebuild and re-extract even if the tree is current")
    build.add_argument("--ca-bundle", type=Path,
                       help="PEM CA bundle the build's downloads trust (default: environment.ca_bundle, "
                            "else $SSL_CERT_FILE, else Debian's public roots only)")
    build.set_defaults(handler=_build_command)
    listing = commands.add_parser("list", help="each scaffold, its pinned version and whether its tree is built")
    listing.set_defaults(handler=_list_command)


def _build_command(args: argparse.Namespace) -> int:
    from evalkit.cli import run_main
    from evalkit.config import load_config
    from evalkit.environments.docker import close_client, open_client

    try:
        target = scaffold(args.name)
        config = load_config(args.config) if args.config else None
        ca_path = args.ca_bundle
        if ca_path is None and config is not None and config.environment.ca_bundle:
            ca_path = config.resolve_path(config.environment.ca_bundle)
        ca_bundle = read_ca_bundle(ca_path)
    except ConfigError as exc:
        print(f"evalkit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    docker_host = config.environment.docker_host if config else None

    def report(line: str) -> None:
        print(line, flush=True)

    async def build() -> int:
        client = await open_client(docker_host)
        try:
            await build_runtime(client, target, ca_bundle=ca_bundle, force=args.force, report=report)
        finally:
            await close_client(client)
        return 0

    return run_main(build())


def _list_command(args: argparse.Namespace) -> int:
    print(f"{'NAME':<15} {'VERSION':<9} {'STATUS':<32} PATH")
    for s in SCAFFOLDS.values():
        print(f"{s.name:<15} {s.version:<9} {runtime_status(s, s.runtime_host_path):<32} {s.runtime_host_path}")
    return 0
