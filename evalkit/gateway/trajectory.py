"""The trajectory format (`<try>/agent/litellm-trajectory.jsonl`) and its one reader, `read_trajectory`.

One JSON line per model call, written when the call ends. Since `v` 2 a line does not repeat what the same
trial's earlier request already holds: an agent resends its whole conversation on every call, so storing each
request whole made the file grow with the square of the conversation (tens of MB per trial at 200k-token
contexts). A line whose request shares a prefix of `messages` (or whole fields such as `tools` and `system`)
with an earlier line of the file carries

    "request_delta": {"base": <seq of that earlier call>, "keep": <leading messages taken from it>,
                      "same": [<request fields taken from it whole>]}

and its `request.messages` holds only the messages after the first `keep`. The base line always comes earlier
in the file than the line that refers to it. `read_trajectory` undoes this and yields every call whole, as a
`v` 1 line was; it reads `v` 1 files unchanged. It is what analysis, export, the dashboard and the load-test
replay use: nothing else should parse these files.

This module imports nothing of the gateway's server side, so readers stay cheap to import.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import orjson

SCHEMA_VERSION = 2
"""`v` of every line written now: 2 added `request_delta`. Lines of `v` 1 hold every request whole."""

RECENT_BASES = 4
"""Earlier requests of a trial a new one is compared with: an agent with subagents alternates conversations."""

SHARED_FIELD_MIN_BYTES = 256
"""A request field shorter than this is written again rather than referred to (it costs less than the reference)."""

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])


# ------------------------------------------------------------------------------------------------ writing


@dataclass(slots=True)
class _Base:
    seq: int
    messages: list[tuple[int, int]]
    """(length, hash) of each message's bytes."""
    fields: dict[str, tuple[int, int]]
    head: tuple[int, int] | None = None
    """(length, hash) of the `messages` array's bytes before its closing bracket: a later array that starts with
    these bytes then a comma holds all of this one's messages, which is found without splitting the shared part."""


def _signature(raw: bytes | memoryview | msgspec.Raw) -> tuple[int, int]:
    data = bytes(raw)
    return len(data), hash(data)


@dataclass(slots=True)
class RequestHistory:
    """What the writer remembers of one trial's recent requests (signatures only, never their bytes)."""

    bases: list[_Base] = field(default_factory=list)

    def encode(self, seq: int, fields: dict[str, msgspec.Raw]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The request as a line holds it (values embedded as the agent's bytes) and its `request_delta`."""
        messages_raw = fields.get("messages")
        head = _head(messages_raw) if messages_raw is not None else None
        best, messages = self._extended(messages_raw, head) if head is not None else (None, None)
        keep = len(best.messages) if best is not None else 0
        if best is not None:  # the usual case: the agent's earlier conversation, byte for byte, then new messages
            message_sigs = best.messages + [_signature(m) for m in messages]  # type: ignore[union-attr]
        elif messages_raw is not None:
            try:
                messages = _raw_list.decode(messages_raw)
            except (msgspec.DecodeError, msgspec.ValidationError):
                messages = None  # not a list: written as it came
            message_sigs = [_signature(m) for m in messages] if messages is not None else []
        else:
            message_sigs = []
        field_sigs = {
            name: _signature(value)
            for name, value in fields.items()
            if name != "messages" and len(value) >= SHARED_FIELD_MIN_BYTES
        }
        tail_only = best is not None
        for base in self.bases if not tail_only else ():
            n = _common_prefix(base.messages, message_sigs)
            if best is None or n > keep:
                best, keep = base, n
        same = [name for name, sig in field_sigs.items() if best is not None and best.fields.get(name) == sig]
        request: dict[str, Any] = {}
        for name, value in fields.items():
            if name in same:
                continue
            if name == "messages" and messages is not None and keep:
                tail = messages if tail_only else messages[keep:]
                request[name] = orjson.Fragment(b"[" + b",".join(_clean(m) for m in tail) + b"]")
            else:
                request[name] = orjson.Fragment(_clean(value))
        self.bases.insert(0, _Base(seq, message_sigs, field_sigs, head if messages is not None else None))
        del self.bases[RECENT_BASES:]
        if best is None or (not keep and not same):
            return request, None
        return request, {"base": best.seq, "keep": keep, "same": same}

    def _extended(self, raw: msgspec.Raw, head: tuple[int, int]) -> tuple[_Base | None, list[msgspec.Raw] | None]:
        """The recent base (of the last two: an agent and its subagent alternate) whose whole `messages` array
        this one's bytes start with, and the messages after it; the shared part is hashed, never split."""
        data = memoryview(raw)
        for base in self.bases[:2]:
            if base.head == head and base.messages:  # the same conversation again (a retry)
                return base, []
            if base.head is None or not base.messages or base.head[0] >= head[0]:
                continue
            rest = data[base.head[0] :].tobytes().lstrip()
            if rest[:1] != b"," or _signature(data[: base.head[0]]) != base.head:
                continue
            try:
                return base, _raw_list.decode(b"[" + rest[1:])
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
        return None, None


def _head(raw: msgspec.Raw) -> tuple[int, int] | None:
    """(length, hash) of an array's bytes before its closing bracket (None for anything but an array)."""
    data = memoryview(raw)
    if data[:1] != b"[" or data[-1:] != b"]":
        return None
    end = len(data) - 1
    while end > 1 and data[end - 1] in _JSON_SPACE:
        end -= 1
    return _signature(data[:end])


_JSON_SPACE = frozenset(b" \t\r\n")


def _common_prefix(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _clean(raw: bytes | msgspec.Raw) -> bytes:
    """JSON bytes fit for one line: a raw newline can only be whitespace between tokens there."""
    data = bytes(raw)
    if b"\n" in data or b"\r" in data:
        data = data.replace(b"\r", b" ").replace(b"\n", b" ")
    return data


# ------------------------------------------------------------------------------------------------ reading


def read_trajectory(path: Path, problems: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Every call of one trajectory file, whole (`request.messages` complete), in file order, streamed.

    Tolerant: a line that is not a JSON object (a torn last line after a crash) is skipped and noted in
    `problems` as `line N is not a JSON object` (plus ` (torn: no newline)` when it has no newline); a line
    whose base is missing is yielded with the messages it holds and `"messages_incomplete": true`. A missing
    file yields nothing; a symlink, FIFO or anything but a regular file is never opened (noted in
    `problems`). Calls share message objects with one another: treat what is yielded as read-only.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        if problems is not None:
            reason = "it is a symlink" if exc.errno == errno.ELOOP else exc.strerror
            problems.append(f"not read: {reason}")
        return
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        if problems is not None:
            problems.append("not read: not a regular file")
        return
    os.set_blocking(fd, True)
    requests: dict[int, dict[str, Any]] = {}
    with os.fdopen(fd, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                call = orjson.loads(line)
            except orjson.JSONDecodeError:
                call = None
            if not isinstance(call, dict):
                if problems is not None:
                    torn = "" if line.endswith(b"\n") else " (torn: no newline)"
                    problems.append(f"line {number} is not a JSON object{torn}")
                continue
            request = call.get("request")
            delta = call.pop("request_delta", None)
            if isinstance(request, dict) and isinstance(delta, dict):
                if not _restore(request, delta, requests):
                    call["messages_incomplete"] = True
                    if problems is not None:
                        problems.append(f"line {number}: its request refers to call {delta.get('base')}, not in the file")
            if isinstance(request, dict) and isinstance(call.get("seq"), int):
                requests[call["seq"]] = request
            yield call


def _restore(request: dict[str, Any], delta: dict[str, Any], requests: dict[int, dict[str, Any]]) -> bool:
    base = requests.get(delta.get("base"))  # type: ignore[arg-type]
    if base is None:
        return False
    for name in delta.get("same") or ():
        if name in base:
            request[name] = base[name]
    keep = delta.get("keep") or 0
    if keep:
        prefix = base.get("messages")
        if not isinstance(prefix, list) or len(prefix) < keep:
            return False
        tail = request.get("messages")
        request["messages"] = prefix[:keep] + (tail if isinstance(tail, list) else [])
    return True
