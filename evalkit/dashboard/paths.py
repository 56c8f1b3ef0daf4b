"""Turning names from a URL into paths under the artifacts directory, refusing everything else.

Every path the dashboard opens comes through `under()`: the names are checked one by one (no `..`, no
absolute path, no percent sign left after the one decoding the server does — so double-encoded `%252e` is
refused rather than looked up — no backslash or NUL), and every component on the way is `lstat`-ed so a
symlink, which a container or an untrusted task may have made, is refused instead of followed. Files are
then opened with `O_NOFOLLOW` and checked again on the open descriptor.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class Refused(Exception):
    """A path the dashboard will not serve. `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class NotFound(Refused):
    def __init__(self, message: str) -> None:
        super().__init__(message, 404)


def split(rel: str) -> list[str]:
    """The components of a relative path from a URL; Refused for anything that could leave the root."""
    if not rel:
        raise Refused("path refused: empty")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise Refused("path refused: absolute paths are not served")
    parts = rel.split("/")
    for part in parts:
        check_name(part)
    return parts


def check_name(name: str) -> str:
    """One path component, as given in a URL."""
    if name in ("", ".", ".."):
        raise Refused("path refused: '.', '..' and empty components are not allowed")
    if "%" in name:
        raise Refused("path refused: encoded characters are not allowed")
    if "\\" in name or "\x00" in name or "/" in name:
        raise Refused("path refused: backslash, NUL or slash in a name")
    return name


def under(root: Path, *names: str) -> Path:
    """`root/names…`, existing, with no symlink at any level below `root`. Raises Refused or NotFound."""
    path = root
    for name in names:
        path = path / check_name(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise NotFound(f"not found: {'/'.join(names)}") from None
        except OSError as exc:
            raise Refused(f"path refused: {exc.strerror}", 403) from None
        if stat.S_ISLNK(st.st_mode):
            raise Refused("path refused: symlinks are not followed", 403)
    return path


def read_regular(path: Path, limit: int) -> tuple[bytes, int]:
    """Up to `limit` bytes of a regular file, and its full size; never through a symlink, never a FIFO."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise NotFound(f"not found: {path.name}") from None
    except OSError as exc:
        raise Refused(f"path refused: {exc.strerror}", 403) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("path refused: not a regular file", 403)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read(limit), st.st_size
    finally:
        os.close(fd)


def text_of(path: Path, limit: int) -> dict[str, object] | None:
    """A text file for display: `{text, size, truncated}`; None when it does not exist or is refused."""
    try:
        data, size = read_regular(path, limit)
    except Refused:
        return None
    return {"text": data.decode("utf-8", errors="replace"), "size": size, "truncated": size > len(data)}
