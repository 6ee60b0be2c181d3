"""The workdir lock: one run per workdir, stale locks broken, other hosts' locks left alone.

The lock module is imported from its file in the child processes (it needs only the
standard library), so each child starts in a fraction of a second.
"""

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cottention_jax import workdir_lock as lock_mod
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

# A child that tries once at time argv[2]: prints "won" or "lost"; a winner holds the lock argv[3] s (3).
CONTENDER = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("workdir_lock", {str(MODULE)!r})
lock_mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock_mod)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
try:
    with lock_mod.WorkdirLock(sys.argv[1], log=lambda line: None):
        print("won", flush=True)
        time.sleep(float(sys.argv[3]) if len(sys.argv) > 3 else 3.0)
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
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLockedError) as caught:
            WorkdirLock(tmp_path).acquire()
        message = str(caught.value)
        assert f"pid {holder.pid}" in message and socket.gethostname() in message and str(tmp_path) in message
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert not (tmp_path / LOCK_FILE).exists()  # released on exit
    with WorkdirLock(tmp_path):  # and free again
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
    assert path.exists()  # never removed from here


def test_release_never_removes_another_runs_lock(tmp_path):
    lock = WorkdirLock(tmp_path)
    lock.acquire()
    _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), token="someone-else")
    lock.release()
    assert (tmp_path / LOCK_FILE).exists()


def test_racing_runs_over_a_stale_lock_leave_exactly_one_winner(tmp_path):
    _write_lock(tmp_path, pid=_dead_pid(), host=socket.gethostname(), start=None)
    go = time.time() + 1.5  # all start breaking it at the same instant
    children = [
        subprocess.Popen([sys.executable, "-c", CONTENDER, str(tmp_path), str(go)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = sorted(child.communicate(timeout=60)[0].strip() for child in children)
    assert results == ["lost", "lost", "lost", "won"], results


# ---------------------------------------------------------------- heartbeat and other hosts (issue 19)


def _age(path: Path, seconds: float) -> None:
    """Make the lock's heartbeat (its mtime) `seconds` old."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_another_hosts_lock_with_an_old_heartbeat_is_broken_with_a_notice(tmp_path):
    """A requeued job on another node used to refuse to start: that lock was never broken."""
    _age(_write_lock(tmp_path, pid=4242, host="node-17", start=None), 120)
    lines = []
    with WorkdirLock(tmp_path, log=lines.append):
        mine = json.loads((tmp_path / LOCK_FILE).read_text())
        assert mine["pid"] == os.getpid() and mine["host"] == socket.gethostname() and mine["heartbeat_s"] == 10
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "pid 4242" in lines[0] and "'node-17'" in lines[0] and re.search(r"heartbeat is 1[12]\d s old", lines[0])
    assert not list(tmp_path.iterdir())  # no aside or probe files left


@pytest.mark.parametrize("age, holder_beat, eta", [(0, None, 60), (50, None, 10), (70, 30.0, 20)])
def test_a_fresh_lock_of_another_host_is_refused(tmp_path, age, holder_beat, eta):
    """Alive: its heartbeat is recent (a holder that beats rarely is given 3 of its own intervals)."""
    path = _write_lock(tmp_path, pid=4242, host="node-17", start=None, heartbeat_s=holder_beat)
    _age(path, age)
    with pytest.raises(WorkdirLockedError) as caught:
        WorkdirLock(tmp_path, log=lambda line: pytest.fail(line)).acquire()
    message = str(caught.value)
    assert "\n" not in message and "pid 4242 on host 'node-17'" in message, message
    assert f"alive: heartbeat {age} s ago" in message, message
    assert f"over {max(60, 3 * (holder_beat or 0)):.0f} s old (in {eta} s)" in message, message
    assert json.loads(path.read_text())["token"] == "t0"  # left alone


def test_the_heartbeat_advances_while_held_and_stops_on_release(tmp_path):
    lock = WorkdirLock(tmp_path, heartbeat_s=0.05, stale_after_s=1.0)
    lock.acquire()
    path, thread = tmp_path / LOCK_FILE, lock._thread
    content = path.read_bytes()
    _age(path, 100)
    deadline = time.time() + 2.0
    while time.time() - path.stat().st_mtime > 5 and time.time() < deadline:
        time.sleep(0.02)
    assert time.time() - path.stat().st_mtime < 5  # beaten again
    assert path.read_bytes() == content  # same holder and token: only the mtime moves
    lock.release()
    assert not path.exists() and not thread.is_alive() and not lock.held
    lock.release()  # idempotent


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, SystemExit])
def test_the_lock_is_released_however_the_block_is_left(tmp_path, exc):
    lock = WorkdirLock(tmp_path, heartbeat_s=0.05, stale_after_s=1.0)
    with pytest.raises(exc):
        with lock:
            thread = lock._thread
            assert (tmp_path / LOCK_FILE).exists() and thread.is_alive()
            raise exc("stop")
    assert not (tmp_path / LOCK_FILE).exists() and not thread.is_alive()
    with WorkdirLock(tmp_path):  # free again
        pass


def test_a_lost_lock_is_said_once_and_never_recreated(tmp_path):
    lines = []
    lock = WorkdirLock(tmp_path, log=lines.append, heartbeat_s=0.05, stale_after_s=1.0)
    lock.acquire()
    path = _write_lock(tmp_path, pid=4242, host="node-17", start=None, token="theirs")
    lock._thread.join(timeout=2.0)
    assert not lock._thread.is_alive() and len(lines) == 1 and "lost" in lines[0], lines
    lock.release()
    assert json.loads(path.read_text())["token"] == "theirs"  # never removed nor rewritten


def test_a_lock_beaten_while_being_broken_is_put_back(tmp_path):
    """Judged stale, then its holder beat before the rename: the moved file is restored."""
    path = _write_lock(tmp_path, pid=4242, host="node-17", start=None)
    _age(path, 120)
    lines = []
    lock = WorkdirLock(tmp_path, log=lines.append)
    holder, mtime = lock._read()
    _age(path, 1)  # the holder's heartbeat
    lock._break(holder, mtime, "whose heartbeat is 120 s old")
    assert json.loads(path.read_text())["token"] == "t0" and not lines
    assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]


def test_racing_runs_over_another_hosts_stale_lock_leave_exactly_one_winner(tmp_path):
    _age(_write_lock(tmp_path, pid=4242, host="node-17", start=None), 600)
    go = time.time() + 1.5
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CONTENDER, str(tmp_path), str(go), "1.0"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    results = sorted(child.communicate(timeout=60)[0].strip() for child in children)
    assert results == ["lost", "lost", "lost", "won"], results
    assert not list(tmp_path.iterdir())


def test_a_pid_of_another_user_counts_as_alive(tmp_path, monkeypatch):
    """os.kill raises PermissionError for another user's process: it exists (the suite runs as root,
    so this branch never ran). On this host a live pid is never broken, however old its heartbeat."""

    def kill(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", kill)
    path = _write_lock(tmp_path, pid=_dead_pid(), host=socket.gethostname(), start=None)
    _age(path, 10_000)
    with pytest.raises(WorkdirLockedError, match="which is running"):
        WorkdirLock(tmp_path, log=lambda line: pytest.fail(line)).acquire()
    assert json.loads(path.read_text())["token"] == "t0"


def test_a_live_holder_without_a_start_time_is_not_stale(tmp_path):
    path = _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), start=None)
    _age(path, 10_000)
    with pytest.raises(WorkdirLockedError, match=rf"in use by another run: pid {os.getpid()}"):
        WorkdirLock(tmp_path, log=lambda line: pytest.fail(line)).acquire()
    assert path.exists()


def test_a_disabled_lock_is_never_taken(tmp_path):
    """Processes other than 0 of a multi-process run: the object exists, nothing is written."""
    _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), start=None)  # even over a held lock
    with WorkdirLock(tmp_path / "sub", enabled=False) as lock, WorkdirLock(tmp_path, enabled=False):
        assert not lock.held and not (tmp_path / "sub").exists()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "t0"


def test_bad_intervals_are_refused(tmp_path):
    with pytest.raises(ValueError, match="heartbeat_s < stale_after_s"):
        WorkdirLock(tmp_path, heartbeat_s=60, stale_after_s=30)


def _zombie() -> subprocess.Popen:
    """A child that has exited and is never reaped (until the caller waits): state 'Z' in /proc."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(2000):  # bounded: the child exits within moments
        if Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return child
        time.sleep(0.01)
    child.kill()
    child.wait()
    pytest.fail(f"child {child.pid} never became a zombie")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_lock_of_a_zombie_holder_is_broken(tmp_path):
    """kill -9 of a run in a container whose PID 1 reaps nothing leaves a zombie forever: it holds nothing."""
    child = _zombie()
    try:
        start = lock_mod._process_start(child.pid)
        assert start is not None  # a zombie still has its /proc entry
        path = _write_lock(tmp_path, pid=child.pid, host=socket.gethostname(), start=start)
        notices = []
        with WorkdirLock(tmp_path, log=notices.append):
            assert json.loads(path.read_text())["pid"] == os.getpid()
        assert len(notices) == 1 and f"pid {child.pid}" in notices[0] and "zombie" in notices[0]
    finally:
        child.wait()


def _fake_proc(monkeypatch, states: list[dict | None]) -> list[float]:
    """Make the /proc reader answer `states` one call after another (the last one from then on);
    time.sleep records its calls instead of sleeping. Returns the recorded sleeps."""
    answers, sleeps = list(states), []
    monkeypatch.setattr(lock_mod, "_proc_stat", lambda pid: answers.pop(0) if len(answers) > 1 else answers[0])
    monkeypatch.setattr(lock_mod.time, "sleep", sleeps.append)
    return sleeps


ALIVE = {"state": "S", "start": "boot:1", "exiting": False}
EXITING = {"state": "D", "start": "boot:1", "exiting": True}
ZOMBIE = {"state": "Z", "start": "boot:1", "exiting": True}


@pytest.mark.parametrize("gone", [ZOMBIE, {"state": "X", "start": "boot:1", "exiting": True}], ids=["zombie", "dead"])
def test_a_holder_being_torn_down_is_waited_for_then_broken(tmp_path, monkeypatch, gone):
    """Right after kill -9 the holder still exists for a moment (its memory being freed): wait for it."""
    sleeps = _fake_proc(monkeypatch, [EXITING, EXITING, EXITING, EXITING, gone])
    _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), start="boot:1")
    notices = []
    with WorkdirLock(tmp_path, log=notices.append) as lock:
        assert lock.held
    assert len(sleeps) >= 2 and len(notices) == 1 and "zombie" in notices[0]


def test_a_holder_that_never_finishes_exiting_is_refused_after_a_bounded_wait(tmp_path, monkeypatch):
    sleeps = _fake_proc(monkeypatch, [EXITING])
    clock = iter(range(0, 1000))  # each reading of the clock is one second later
    monkeypatch.setattr(lock_mod.time, "monotonic", lambda: float(next(clock)))
    path = _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), start="boot:1")
    with pytest.raises(WorkdirLockedError, match="exiting but still there"):
        WorkdirLock(tmp_path, log=lambda line: pytest.fail(line)).acquire()
    assert 0 < len(sleeps) <= lock_mod._EXIT_WAIT_S + 1
    assert json.loads(path.read_text())["token"] == "t0"


def test_a_live_holder_that_is_not_exiting_is_refused_without_waiting(tmp_path, monkeypatch):
    sleeps = _fake_proc(monkeypatch, [ALIVE])
    path = _write_lock(tmp_path, pid=os.getpid(), host=socket.gethostname(), start="boot:1")
    with pytest.raises(WorkdirLockedError, match="which is running"):
        WorkdirLock(tmp_path, log=lambda line: pytest.fail(line)).acquire()
    assert sleeps == [] and json.loads(path.read_text())["token"] == "t0"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_the_proc_reader_reads_state_and_start_time():
    """The parsing behind both: this live process (running, not exiting) and a zombie (state Z)."""
    me = lock_mod._proc_stat(os.getpid())
    assert me["state"] in "RS" and not me["exiting"] and me["start"] == lock_mod._process_start(os.getpid())
    child = _zombie()
    try:
        assert lock_mod._proc_stat(child.pid)["state"] == "Z"
    finally:
        child.wait()
