"""One job, one runner: `<job>/.lock`, held with `flock` while a process runs the job.

Two runners of one job would remove each other's containers and write the same try directories; `evalkit
clean` must not remove the containers of a job that is running. The kernel drops the lock when the process
dies, however it dies, so a stale lock never blocks a resume. Blocking calls: run these in a thread.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from evalkit.errors import InfrastructureError, JobRunningError

LOCK_FILE = ".lock"


class JobLock:
    def __init__(self, job_dir: Path, job_name: str) -> None:
        self.path = job_dir / LOCK_FILE
        self.job_name = job_name
        self._fd: int | None = None
        self.created: list[Path] = []
        """Directories `acquire` made, deepest first: a job that fails to prepare leaves none of them."""

    def acquire(self) -> None:
        """Create the job directory if needed and take the lock; JobRunningError names the holder."""
        try:
            job_dir = self.path.parent
            self.created = [p for p in (job_dir, *job_dir.parents) if not p.exists()]
            job_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise InfrastructureError(f"cannot create the job directory {self.path.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            who = f"pid {holder[0]} on host {holder[1]}" if len(holder) >= 2 else "another process"
            raise JobRunningError(
                f"job {self.job_name!r} is already running in {self.path.parent} ({who}); "
                "wait for it to finish or stop it, or give this run another job_name"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Idempotent. The file stays: removing it would race with a runner that just opened it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def release_and_remove_empty(self) -> None:
        """For a job that failed before writing anything: leave no directory it made."""
        if self._fd is not None and self.created and [p.name for p in self.path.parent.iterdir()] == [LOCK_FILE]:
            self.path.unlink()
            for directory in self.created:
                try:
                    directory.rmdir()
                except OSError:  # not empty (someone else's files): keep it and its parents
                    break
        self.release()


def job_is_running(job_dir: Path) -> bool:
    """Whether some process holds `job_dir`'s lock (a job directory that is gone runs nothing)."""
    return lock_held(job_dir / LOCK_FILE)


def lock_held(lock_path: Path) -> bool:
    """Is `lock_path` flock-ed by some process? Read from /proc/locks (Linux), so looking never takes the lock
    and a runner starting at that moment is never refused; elsewhere, a shared non-blocking probe. A missing
    file is not held; one that cannot be examined counts as held (its job's containers are kept)."""
    try:
        st = os.stat(lock_path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    proc_locks = Path("/proc/locks")
    if proc_locks.exists():
        suffix = f":{st.st_ino}"
        for line in proc_locks.read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].endswith(suffix):
                major, minor, inode = fields[5].split(":")
                if int(inode) == st.st_ino and (int(major, 16), int(minor, 16)) == (os.major(st.st_dev), os.minor(st.st_dev)):
                    return True
        return False
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
