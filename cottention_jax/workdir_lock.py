"""An exclusive lock on a training workdir: one run writes a workdir at a time.

Two runs in one workdir interleave their metrics and overwrite each other's
checkpoints, so `train_and_evaluate` holds `WorkdirLock(workdir)` for the whole run.
The lock is the file `<workdir>/train.lock`, created with `os.open(O_CREAT | O_EXCL)`
(atomic: of two runs creating it at once exactly one succeeds) and holding one JSON
line that names its holder: pid, host, the process's start time (Linux), when it was
taken, a random token and the command line. A second run fails at once with
`WorkdirLockedError` naming that holder.

Stale locks (a run killed with SIGKILL, or by a power cut) are detected on the same
host: the holder's pid no longer exists, or it now belongs to a process started at
another time (a reused pid). Such a lock is broken with a one-line message and taken.
A lock held from another host cannot be checked from here; the error says which host
and how to remove the lock by hand once that run is known to be gone.

Standard library only (no jax): cheap to import, and usable from any process.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import sys
import time
from pathlib import Path
from typing import Callable

__all__ = ["LOCK_FILE", "WorkdirLock", "WorkdirLockedError"]

LOCK_FILE = "train.lock"
_PARTIAL_GRACE_S = 5.0     # a lock file still empty after this long was left by a crash mid-write
_ATTEMPTS = 8


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir's lock; the message names it (pid, host, since, command)."""


def _process_start(pid: int) -> str | None:
    """An identifier of when process `pid` started (Linux: boot id + start ticks), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) ": state is field 3
    return f"{boot}:{fields[19]}"                   # field 22, starttime in clock ticks since boot


def _pid_exists(pid: int) -> bool:
    if os.name == "nt":          # os.kill(pid, 0) would terminate it there: assume alive (never broken)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:      # exists, owned by another user
        return True
    return True


def _describe(holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return (f"pid {holder.get('pid')} on host {holder.get('host')!r} since {when} "
            f"(command: {holder.get('command', '?')})")


class WorkdirLock:
    """`with WorkdirLock(workdir): ...` holds `<workdir>/train.lock` for the block.

    log: where the one-line notice of a broken stale lock goes (default: stderr).
    Raises WorkdirLockedError when a live run holds the lock.
    """

    def __init__(self, workdir: str | os.PathLike, *, log: Callable[[str], None] | None = None):
        self.path = Path(workdir) / LOCK_FILE
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.token: str | None = None

    # ------------------------------------------------------------------ holder records

    def _record(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()),
                "since": time.time(), "token": self.token, "command": " ".join(sys.argv)}

    def _read(self, path: Path | None = None) -> dict | None:
        """The holder in the lock file; {} while it is being written (empty or partial); None if absent."""
        try:
            text = (path or self.path).read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def _is_stale(self, holder: dict) -> bool:
        if not holder:   # empty or partial: stale only if it has stayed so (its writer died mid-write)
            try:
                return time.time() - self.path.stat().st_mtime > _PARTIAL_GRACE_S
            except FileNotFoundError:
                return False
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return False
        if not _pid_exists(holder["pid"]):
            return True
        start = _process_start(holder["pid"])
        return holder.get("start") is not None and start is not None and start != holder["start"]

    # ------------------------------------------------------------------ acquire / release

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self._record()) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    def _break(self, holder: dict) -> bool:
        """Move a stale lock aside; False when it changed in between (someone else took it)."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True            # already broken by another run: just try to create it again
        moved = self._read(aside) or {}
        if moved.get("token") == holder.get("token"):
            aside.unlink()
            if holder:
                self.log(f"workdir lock {self.path}: removed the stale lock of {_describe(holder)}, "
                         "which is no longer running")
            return True
        try:                        # a fresh lock was moved: put it back unless yet another exists
            os.link(aside, self.path)
        except FileExistsError:
            pass
        aside.unlink()
        return False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(16)
        for _ in range(_ATTEMPTS):
            if self._try_create():
                return
            holder = self._read()
            if holder is None:     # released in between
                continue
            if not self._is_stale(holder):
                if not holder:     # being written right now: look again shortly
                    time.sleep(0.05)
                    holder = self._read() or {}
                    if not holder or self._is_stale(holder):
                        continue
                raise WorkdirLockedError(
                    f"workdir {self.path.parent} is in use by another run: {_describe(holder)}. Wait for it "
                    f"to finish or use another workdir. If that run is gone (e.g. its machine crashed), "
                    f"delete {self.path}")
            self._break(holder)
        raise WorkdirLockedError(f"could not take the workdir lock {self.path}: it kept changing "
                                 f"({_ATTEMPTS} attempts); another run is starting in this workdir")

    def release(self) -> None:
        """Remove the lock if it is still ours (never another run's)."""
        if self.token is not None and (self._read() or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        self.token = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
