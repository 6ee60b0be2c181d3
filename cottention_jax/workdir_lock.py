"""An exclusive lock on a training workdir: one run writes a workdir at a time.

Two runs in one workdir interleave their metrics and overwrite each other's
checkpoints, so `train_and_evaluate` holds `WorkdirLock(workdir)` for the whole run
(in a multi-process run, process 0 only: the others pass `enabled=False`).
The lock is the file `<workdir>/train.lock`, created with `os.open(O_CREAT | O_EXCL)`
(atomic: of two runs creating it at once exactly one succeeds) and holding one JSON
line that names its holder: pid, host, the process's start time (Linux), when it was
taken, a random token, the command line and the holder's heartbeat interval. The
content is written once and never changes.

Heartbeat: while held, a daemon thread refreshes the file's modification time every
`heartbeat_s` seconds (`ls -l --time-style=full-iso train.lock` shows the last beat).
It touches the file through a descriptor it has just checked holds our token, so a
beat never creates, replaces or rewrites a lock: a lock broken or taken over by
another run is left alone (and the loss is said once). The age of a beat is measured
against the modification time of a probe file created in the workdir at that moment,
so on a shared (NFS) filesystem both times come from the file server's clock and the
hosts' clocks may disagree. (A timestamp written in the JSON by the holder would
compare two hosts' clocks, and rewriting the file could resurrect a broken lock.)

A lock is stale, broken with a one-line notice through `log` and taken, when:
- its holder is on this host and its pid no longer exists, is a zombie (exited, not yet
  reaped: in a container whose PID 1 reaps nothing it stays so), or now belongs to a process
  started at another time (a reused pid). A live pid is never broken, whatever its heartbeat;
  one the kernel is tearing down (just killed: a pending SIGKILL, or exiting) is waited for,
  up to 5 s, before the run is refused;
- its holder is on another host and its heartbeat is older than `stale_after_s`
  (at least three of the holder's own heartbeat intervals): e.g. a preempted job,
  requeued on another node;
- it stayed empty or partial for seconds (its writer died mid-write).
Breaking is a rename of the lock aside, then a check that the moved file is the very
lock judged stale (same token, not beaten since); otherwise it is put back. Of runs
racing to break one stale lock exactly one takes it.

Standard library only (no jax): cheap to import, and usable from any process.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["LOCK_FILE", "WorkdirLock", "WorkdirLockedError"]

LOCK_FILE = "train.lock"
_PARTIAL_GRACE_S = 5.0  # a lock file still empty after this long was left by a crash mid-write
_ATTEMPTS = 8
_EXIT_WAIT_S = 5.0  # how long to wait for a holder that the kernel is tearing down (e.g. just after kill -9)
_EXIT_POLL_S = 0.05
_PF_EXITING = 0x4  # linux/sched.h: the task is exiting


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir's lock; the message names it (pid, host, since, command)."""


def _proc_stat(pid: int) -> dict | None:
    """What Linux says of process `pid` (/proc/<pid>/stat and status), else None (no /proc, or no such pid):
    state ('R', 'S', 'D', 'Z' zombie, 'X' dead...), start (boot id + start ticks, which tells a reused pid),
    exiting (the kernel is tearing it down: PF_EXITING, or a SIGKILL not yet acted on)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) onwards
    exiting = int(fields[6]) & _PF_EXITING != 0  # field 9, the task's flags
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("SigPnd:", "ShdPnd:")):  # pending signals, a hex mask: bit 8 is SIGKILL (9)
                exiting = exiting or int(line.split()[1], 16) & (1 << 8) != 0
    except (OSError, ValueError, IndexError):
        pass
    return {"state": fields[0], "start": f"{boot}:{fields[19]}", "exiting": exiting}  # field 22, starttime


def _process_start(pid: int) -> str | None:
    """An identifier of when process `pid` started (Linux: boot id + start ticks), else None."""
    info = _proc_stat(pid)
    return None if info is None else info["start"]


def _pid_exists(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate it there: assume alive (never broken)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _describe(holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    return (
        f"pid {holder.get('pid')} on host {holder.get('host')!r} since {when} (command: {holder.get('command', '?')})"
    )


class WorkdirLock:
    """`with WorkdirLock(workdir): ...` holds `<workdir>/train.lock` for the block.

    log: where one-line notices go (a broken stale lock, a lost lock; default: stderr).
    heartbeat_s: how often the holder refreshes the lock's heartbeat (its mtime).
    stale_after_s: a lock from another host whose heartbeat is older than this is broken.
    enabled: False gives a lock that is never taken (processes other than 0 of a run).
    Raises WorkdirLockedError when a live run holds the lock. Released on leaving the
    block however it is left (exceptions, SystemExit, KeyboardInterrupt), by `release()`,
    or at interpreter exit.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        log: Callable[[str], None] | None = None,
        heartbeat_s: float = 10.0,
        stale_after_s: float = 60.0,
        enabled: bool = True,
    ):
        if not heartbeat_s > 0 or not stale_after_s > heartbeat_s:
            raise ValueError(
                f"need 0 < heartbeat_s < stale_after_s; got heartbeat_s={heartbeat_s}, stale_after_s={stale_after_s}"
            )
        self.path = Path(workdir) / LOCK_FILE
        self.log = log or (lambda line: print(line, file=sys.stderr))
        self.heartbeat_s, self.stale_after_s, self.enabled = float(heartbeat_s), float(stale_after_s), enabled
        self.token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self.token is not None

    # ------------------------------------------------------------------ holder records

    def _record(self) -> dict:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start": _process_start(os.getpid()),
            "since": time.time(),
            "token": self.token,
            "command": " ".join(sys.argv),
            "heartbeat_s": self.heartbeat_s,
        }

    def _read(self, path: Path | None = None) -> tuple[dict | None, int | None]:
        """(holder, heartbeat as mtime in ns) of the lock file. The holder is {} while it is being
        written (empty or partial), None if absent. Both come from one open file (one inode)."""
        try:
            with open(path or self.path, "rb") as f:
                text, mtime = f.read(), os.fstat(f.fileno()).st_mtime_ns
        except FileNotFoundError:
            return None, None
        try:
            holder = json.loads(text)
        except ValueError:
            return {}, mtime
        return (holder if isinstance(holder, dict) else {}), mtime

    def _fs_now(self) -> float:
        """Now, by the clock that stamps files in the workdir (the file server's, on NFS)."""
        probe = self.path.with_name(f"{LOCK_FILE}.now-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except OSError:
            return time.time()
        try:
            return os.fstat(fd).st_mtime_ns / 1e9
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)

    def _stale_bound(self, holder: dict) -> float:
        theirs = holder.get("heartbeat_s")
        return max(self.stale_after_s, 3 * theirs if isinstance(theirs, (int, float)) else 0.0)

    def _verdict(self, holder: dict, mtime_ns: int) -> str | None:
        """Why this lock is stale (the notice's words), or None while its holder lives."""
        if not holder:  # empty or partial: stale only if it has stayed so (its writer died mid-write)
            age = self._fs_now() - mtime_ns / 1e9
            return f"left empty by a run that died while taking it {age:.0f} s ago" if age > _PARTIAL_GRACE_S else None
        if holder.get("host") != socket.gethostname():
            age = self._fs_now() - mtime_ns / 1e9
            return f"whose heartbeat is {age:.0f} s old" if age > self._stale_bound(holder) else None
        if not isinstance(holder.get("pid"), int):
            return None
        return self._pid_verdict(holder)

    @staticmethod
    def _pid_verdict(holder: dict) -> str | None:
        """Whether the holder's pid (on this host) is gone, a zombie or another process; None while it lives."""
        if not _pid_exists(holder["pid"]):
            return "which is no longer running"
        info = _proc_stat(holder["pid"])
        if info is None:  # no /proc (or it vanished in between): os.kill said it exists
            return None
        if info["state"] in ("Z", "X", "x"):  # exited; a zombie nobody reaps (e.g. PID 1 of a container) stays
            return "which has exited (a zombie process, never reaped)"
        if holder.get("start") is not None and info["start"] != holder["start"]:
            return "which is no longer running (its pid now belongs to another process)"
        return None

    def _wait_for_exit(self, holder: dict) -> str | None:
        """A holder on this host that the kernel is tearing down (just killed): wait up to _EXIT_WAIT_S
        for it to go. The verdict once it has gone, None if it is alive and not exiting, or still there."""
        if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
            return None
        deadline = time.monotonic() + _EXIT_WAIT_S
        while True:
            info = _proc_stat(holder["pid"])
            if info is None or not info["exiting"] or time.monotonic() >= deadline:
                return None
            time.sleep(_EXIT_POLL_S)
            why = self._pid_verdict(holder)
            if why is not None:
                return why

    def _refusal(self, holder: dict, mtime_ns: int) -> WorkdirLockedError:
        head = f"workdir {self.path.parent} is in use by another run: {_describe(holder)}"
        if holder.get("host") == socket.gethostname():
            info = _proc_stat(holder["pid"]) if isinstance(holder.get("pid"), int) else None
            if info is not None and info["exiting"]:
                return WorkdirLockedError(
                    f"{head}, which is exiting but still there after {_EXIT_WAIT_S:.0f} s. Rerun in a moment; if "
                    f"it never goes, delete {self.path}"
                )
            return WorkdirLockedError(
                f"{head}, which is running. Wait for it to finish or use another workdir. If that run is "
                f"gone, delete {self.path}"
            )
        age, bound = max(0.0, self._fs_now() - mtime_ns / 1e9), self._stale_bound(holder)
        return WorkdirLockedError(
            f"{head}, alive: heartbeat {age:.0f} s ago. It counts as stale once its heartbeat is over "
            f"{bound:.0f} s old (in {max(0.0, bound - age):.0f} s). Wait for it to finish or use another "
            f"workdir; if that run is known to be gone, delete {self.path}"
        )

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

    def _break(self, holder: dict, mtime_ns: int, why: str) -> None:
        """Move a stale lock aside and delete it, unless it changed in between (put back then)."""
        aside = self.path.with_name(f"{LOCK_FILE}.stale-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # already broken by another run: just try to create it again
        moved, moved_mtime = self._read(aside)
        if (moved or {}).get("token") == holder.get("token") and moved_mtime == mtime_ns:
            aside.unlink()
            if holder:
                self.log(f"workdir lock {self.path}: removed the stale lock of {_describe(holder)}, {why}")
            return
        try:  # a fresh (or just beaten) lock was moved: put it back unless another exists
            os.link(aside, self.path)
        except FileExistsError:
            pass
        aside.unlink()

    def acquire(self) -> None:
        if not self.enabled or self.held:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(16)
        try:
            self._take()
        except BaseException:
            self.token = None
            raise
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path}", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def _take(self) -> None:
        for _ in range(_ATTEMPTS):
            if self._try_create():
                return
            holder, mtime = self._read()
            if holder is None or mtime is None:  # released in between (both None together)
                continue
            why = self._verdict(holder, mtime)
            if why is None:
                if not holder:  # being written right now: look again shortly
                    time.sleep(0.05)
                    holder, mtime = self._read()
                    if not holder or mtime is None or self._verdict(holder, mtime):
                        continue
                why = self._wait_for_exit(holder)
                if why is None:
                    raise self._refusal(holder, mtime)
            self._break(holder, mtime, why)
        raise WorkdirLockedError(
            f"could not take the workdir lock {self.path}: it kept changing "
            f"({_ATTEMPTS} attempts); another run is starting in this workdir"
        )

    def _beat(self) -> None:
        """Refresh the heartbeat (mtime) of our own lock file until released; never create one."""
        while not self._stop.wait(self.heartbeat_s):
            token = self.token
            try:
                with open(self.path, "rb") as f:
                    ours = token is not None and (json.loads(f.read()) or {}).get("token") == token
                    if ours:
                        os.utime(f.fileno() if os.utime in os.supports_fd else self.path)
            except FileNotFoundError:
                ours = False
            except (OSError, ValueError, AttributeError):
                continue  # a passing filesystem error or a partial read: try at the next beat
            if not ours:
                if not self._stop.is_set():
                    self.log(
                        f"workdir lock {self.path}: lost (removed or taken by another run); this run no "
                        "longer holds its workdir"
                    )
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours (never another run's). Idempotent."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        self._thread = None
        if self.token is not None:
            atexit.unregister(self.release)
            if (self._read()[0] or {}).get("token") == self.token:
                self.path.unlink(missing_ok=True)
        self.token = None

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
