"""CPU time and peak memory of a process and its descendants, from /proc (Linux).

Used to charge a gateway's processes (or a proxy the benchmark starts) for the work they did during a step,
without any cooperation from them: workers they fork are counted too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses


def process_tree(*roots: int) -> list[int]:
    """The `roots` and every live descendant, each once."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree: dict[int, None] = {}
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree[pid] = None
            todo += children.get(pid, [])
    return list(tree)


@dataclass(frozen=True, slots=True)
class TreeUsage:
    cpu_sec: float
    """User + system CPU of the live processes (and the children they have waited for)."""
    peak_rss_mib: float
    """Sum of each process's peak resident set (VmHWM)."""


def tree_usage(*roots: int) -> TreeUsage:
    cpu = 0.0
    peak_kib = 0
    for pid in process_tree(*roots):
        if (fields := _stat_fields(pid)) is None:
            continue
        # fields[11..14]: utime, stime, cutime, cstime (man 5 proc, counted from field 3)
        cpu += sum(int(v) for v in fields[11:15]) / _TICKS
        try:
            for line in (_PROC / str(pid) / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kib += int(line.split()[1])
        except OSError:
            continue
    return TreeUsage(cpu, peak_kib / 1024)
