"""The workdir lock: one run per workdir, stale locks broken, other hosts' locks left alone.

The lock module is imported from its file in the child processes (it needs only the
standard library), so each child starts in a fraction of a second.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cottention_jax.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLockedError
from tests._util import REPO_ROOT

MODULE = REPO_ROOT / "cottention_jax" / "workdir_lock.py"

# A child that takes the lock, says so, and holds it until its stdin closes.
HOLDER = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("workdir_lock", {str(MODULE)!r})
lock_mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock_mod)
with lock_mod.WorkdirLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""

# A child that tries once at time argv[2]: prints "won" or "lost"; a winner holds the lock 3 s.
CONTENDER = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("workdir_lock", {str(MODULE)!r})
lock_mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock_mod)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    with lock_mod.WorkdirLock(sys.argv[1], log=lambda line: None):
        print("won", flush=True)
        time.sleep(3.0)
except lock_mod.WorkdirLockedError:
    print("lost", flush=True)
"""


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _write_lock(workdir: Path, **holder) -> Path:
    path = workdir / LOCK_FILE
    path.write_text(json.dumps({"token": "t0", "since": time.time(), "command": "train", **holder}) + "\n")
    return path


def test_a_second_run_fails_at_once_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLockedError) as caught:
            WorkdirLock(tmp_path).acquire()
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message and str(tmp_path) in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (tmp_path / LOCK_FILE).exists()          # released on exit
    with WorkdirLock(tmp_path):                          # and free again
        assert (tmp_path / LOCK_FILE).exists()


def test_a_stale_lock_of_a_dead_process_is_broken(tmp_path):
    pid = _dead_pid()
    _write_lock(tmp_path, pid=pid, host=socket.gethostname(), start=None)
    lines = []
    with WorkdirLock(tmp_path, log=lines.append):
        mine = json.loads((tmp_path / LOCK_FILE).read_text())
        assert mine["pid"] == os.getpid() and mine["host"] == socket.gethostname()
    assert len(lines) == 1 and f"pid {pid}" in lines[0] and "stale" in lines[0]
    assert not list(tmp_path.glob(f"{LOCK_FILE}*"))


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process start times need Linux /proc")
def test_a_lock_whose_pid_was_reused_is_stale(tmp_path):
    """pid 1 is alive, but not the process that took this lock (another start time)."""
    _write_lock(tmp_path, pid=1, host=socket.gethostname(), start="another-boot:12345")
    with WorkdirLock(tmp_path, log=lambda line: None):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_held_from_another_host_is_refused_with_instructions(tmp_path):
    path = _write_lock(tmp_path, pid=_dead_pid(), host="some-other-host", start=None)
    with pytest.raises(WorkdirLockedError, match=rf"some-other-host.*delete {path}"):
        WorkdirLock(tmp_path).acquire()
    assert path.exists()                                  # never removed from here


def test_release_never_removes_another_runs_lock(tmp_path):
    lock = WorkdirLock(tmp_path)
    lock.acquire()
    _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), token="someone-else")
    lock.release()
    assert (tmp_path / LOCK_FILE).exists()


def test_racing_runs_over_a_stale_lock_leave_exactly_one_winner(tmp_path):
    _write_lock(tmp_path, pid=_dead_pid(), host=socket.gethostname(), start=None)
    go = time.time() + 1.5                                # all start breaking it at the same instant
    children = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(tmp_path), str(go)],
                                 stdout=subprocess.PIPE, text=True) for _ in range(4)]
    results = sorted(child.communicate(timeout=60)[0].strip() for child in children)
    assert results == ["lost", "lost", "lost", "won"], results
