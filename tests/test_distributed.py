"""cottention_jax.distributed and cottention-launch, with real processes on localhost (gloo).

The multi-process tests start `python -m cottention_jax.launch --nproc 2 -- python -m
tests._distributed_worker` (2 ranks x 2 CPU devices); the worker's modes are described
in tests/_distributed_worker.py. JAX timeouts there are short (heartbeat 10 s, init
30 s, shutdown 10 s), so a broken run fails in seconds. The rest are in-process checks
of the config, the cluster detection and the device split.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cottention_jax import distributed, launch
from cottention_jax.distributed import DistributedConfig, config_from_env, detected_cluster

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_VARS = (
    "SLURM_NTASKS",
    "SLURM_PROCID",
    "SLURM_JOB_ID",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_RANK",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "MEGASCALE_NUM_SLICES",
    "JAX_COORDINATOR_ADDRESS",
    distributed.ENV_COORDINATOR,
    distributed.ENV_NUM_PROCESSES,
    distributed.ENV_PROCESS_ID,
)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in CLUSTER_VARS and k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", **extra)  # CPU devices even on a GPU machine
    return env


def _launch_cmd(nproc: int = 2, per_process: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cottention_jax.launch",
        "--nproc",
        str(nproc),
        "--devices-per-process",
        str(per_process),
        "--",
        sys.executable,
        "-m",
        "tests._distributed_worker",
    ]


def _run(mode: str, timeout: float = 120, **extra) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run(
        _launch_cmd(),
        cwd=ROOT,
        env=_env(DIST_WORKER_MODE=mode, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - start


def _results(stdout: str) -> dict[int, dict]:
    out = {}
    for line in stdout.splitlines():
        if "] RESULT " in line:
            prefix, payload = line.split(" RESULT ", 1)
            out[int(prefix.strip("[]"))] = json.loads(payload)
    return out


def test_two_processes_see_four_devices_and_agree_on_a_global_sum():
    done, _ = _run("sum")
    assert done.returncode == 0, done.stderr[-3000:]
    results = _results(done.stdout)
    assert sorted(results) == [0, 1], done.stdout
    for rank, r in results.items():
        assert r["initialized"] and r["process_index"] == rank and r["process_count"] == 2
        assert (r["local_devices"], r["global_devices"]) == (2, 4)
        assert r["sum"] == r["expected"] == 66.0
        assert r["primary"] == (rank == 0) and r["prefix"] == f"[rank {rank}] "
    # every forwarded line carries its rank
    lines = [ln for ln in done.stdout.splitlines() if ln.strip()]
    assert all(ln.startswith(("[0] ", "[1] ")) for ln in lines), lines


class _Launched:
    """The launcher running in the background, its stdout lines collected with arrival times."""

    def __init__(self, mode: str, **extra):
        self.proc = subprocess.Popen(
            _launch_cmd(),
            cwd=ROOT,
            env=_env(DIST_WORKER_MODE=mode, **extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in iter(self.proc.stdout.readline, ""):
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, text: str, count: int = 1, timeout: float = 90) -> float:
        """When the count-th line ending in `text` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            hits = [t for t, ln in self.lines if ln.endswith(text)]
            if len(hits) >= count:
                return hits[count - 1]
            assert self.proc.poll() is None and time.monotonic() < deadline, self.text()
            time.sleep(0.05)

    def finish(self, timeout: float) -> tuple[int, str]:
        """(exit status, stderr); the launcher is killed if it outlives `timeout`."""
        try:
            rc = self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(timeout=10)
        return rc, self.proc.stderr.read()

    def text(self) -> str:
        return "\n".join(ln for _, ln in self.lines)


@pytest.mark.slow  # ~15 s: the launcher's 10 s grace before SIGKILL is part of what is tested
def test_a_failing_rank_stops_the_others_and_sets_the_exit_status():
    # rank 0 sleeps 60 s with JAX's preemption handler installed (SIGTERM only sets a flag),
    # and a heartbeat timeout longer than the test: the launcher itself must kill it
    run = _Launched("fail", DIST_WORKER_HEARTBEAT_S="60")
    failed_at = run.wait_for("[1] failing now")
    rc, stderr = run.finish(timeout=60)
    assert rc == 3, stderr[-3000:]
    assert time.monotonic() - failed_at < 30
    assert "rank 1 exited with status 3; stopping the other ranks" in stderr
    assert "rank(s) 0 still running 10s after SIGTERM; killing" in stderr
    pids = [int(ln.split()[-1]) for _, ln in run.lines if " pid " in ln]
    assert len(pids) == 2
    for pid in pids:  # no orphans
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_sigterm_to_the_launcher_reaches_every_rank():
    run = _Launched("sigterm")
    run.wait_for("] ready", count=2)
    run.proc.send_signal(signal.SIGTERM)
    rc, stderr = run.finish(timeout=30)
    assert rc == 143, stderr[-3000:]
    lines = [ln for _, ln in run.lines]
    assert "[0] got SIGTERM" in lines and "[1] got SIGTERM" in lines, lines
    assert "got SIGTERM; passing it to every rank" in stderr


def test_a_barrier_times_out_naming_itself_and_the_missing_process():
    done, _ = _run("barrier", DIST_WORKER_SLEEP_S="5")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[0] ERROR [rank 0] barrier 'slow' timed out after 2s waiting for process(es) 1" in done.stdout, done.stdout


def test_one_process_is_left_alone(monkeypatch):
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize(config_from_env(DistributedConfig())) is False
    assert distributed.initialize(DistributedConfig("127.0.0.1:1234", 1, 0)) is False
    monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task SLURM job is one process
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    assert distributed.initialize(DistributedConfig()) is False
    distributed.barrier("nothing to wait for", 0.1)  # no-op


def test_half_an_explicit_config_is_an_error(monkeypatch):
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="coordinator and process_id"):
        distributed.initialize(DistributedConfig(num_processes=2))
    with pytest.raises(ValueError, match="coordinator is set but num_processes is not"):
        distributed.initialize(DistributedConfig(coordinator="10.0.0.1:1234"))


def test_initialize_after_the_backend_started_says_what_to_move(monkeypatch):
    import jax

    jax.devices()
    with pytest.raises(RuntimeError, match="must run before any JAX call"):
        distributed.initialize(DistributedConfig("127.0.0.1:1234", 2, 0))


def test_an_unreachable_coordinator_is_a_one_line_error():
    code = (
        "from cottention_jax import distributed as d\n"
        f"d.initialize(d.DistributedConfig('127.0.0.1:{launch.free_port()}', 2, 1, init_timeout_s=1))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: process 1: the coordinator 127.0.0.1:") and "within 1s" in last


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"coordinator": "localhost"}, "coordinator"),
        ({"coordinator": "host:70000"}, "coordinator"),
        ({"num_processes": 0}, "num_processes"),
        ({"num_processes": True}, "num_processes"),
        ({"process_id": -1}, "process_id"),
        ({"num_processes": 2, "process_id": 2}, "process_id"),
        ({"local_device_ids": "0,a"}, "local_device_ids"),
        ({"heartbeat_timeout_s": 0}, "heartbeat_timeout_s"),
        ({"init_timeout_s": 1.5}, "init_timeout_s"),
        ({"shutdown_timeout_s": -3}, "shutdown_timeout_s"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"distributed\.{field} "):
        DistributedConfig(**kwargs)


def test_config_from_env_fills_only_what_is_unset():
    env = {"COTTENTION_COORDINATOR": "10.0.0.1:1234", "COTTENTION_NUM_PROCESSES": "4", "COTTENTION_PROCESS_ID": "3"}
    assert config_from_env(DistributedConfig(), env) == DistributedConfig("10.0.0.1:1234", 4, 3)
    assert config_from_env(DistributedConfig(process_id=1), env).process_id == 1
    jax_env = {"JAX_COORDINATOR_ADDRESS": "h:9"}
    assert config_from_env(None, jax_env).coordinator is None  # alone it is not a multi-process run
    assert config_from_env(None, {**jax_env, "COTTENTION_NUM_PROCESSES": "2"}).coordinator == "h:9"
    assert DistributedConfig("[::1]:80", local_device_ids="0, 2").local_device_id_list() == [0, 2]
    with pytest.raises(ValueError, match="COTTENTION_NUM_PROCESSES must be an integer"):
        config_from_env(DistributedConfig(), {"COTTENTION_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match="process_id must be < num_processes"):
        config_from_env(DistributedConfig(), {**env, "COTTENTION_PROCESS_ID": "4"})


def test_cluster_detection_counts_only_multi_process_clusters():
    assert detected_cluster({}) is None
    slurm = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0"}
    assert detected_cluster({**slurm, "SLURM_NTASKS": "1"}) is None
    assert detected_cluster({**slurm, "SLURM_NTASKS": "2"}) == "SLURM"
    assert detected_cluster({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1"}) == "Open MPI"
    assert detected_cluster({"TPU_WORKER_HOSTNAMES": "t0,t1"}) == "Cloud TPU"
    assert detected_cluster({"TPU_WORKER_HOSTNAMES": "t0"}) is None


def test_devices_are_split_among_the_ranks():
    cpu = {"JAX_PLATFORMS": "cpu"}
    flags = "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=8"
    shares = launch.split_devices(2, None, {**cpu, "XLA_FLAGS": flags})
    assert shares == [{"XLA_FLAGS": "--xla_dump_to=/tmp/x --xla_force_host_platform_device_count=4"}] * 2
    assert launch.split_devices(3, None, cpu)[0]["XLA_FLAGS"].endswith("_count=1")
    assert launch.split_devices(2, 3, {**cpu, "JAX_NUM_CPU_DEVICES": "8"})[1] == {
        "XLA_FLAGS": "--xla_force_host_platform_device_count=3",
        "JAX_NUM_CPU_DEVICES": "3",
    }
    gpus = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}
    assert launch.split_devices(2, None, gpus) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert launch.split_devices(2, 1, gpus)[1] == {"CUDA_VISIBLE_DEVICES": "1"}
    with pytest.raises(ValueError, match="needs 6 GPUs, but 4 are visible"):
        launch.split_devices(2, 3, gpus)


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # jax is loaded in pytest, not in the launcher
def test_launcher_usage_errors(capsys, monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    with pytest.raises(SystemExit) as exc:
        launch.main(["--nproc", "2"])
    assert exc.value.code == 2 and "no command" in capsys.readouterr().err
    assert launch.main(["--nproc", "1", "--", "/nonexistent/command"]) == 127
    assert launch.main(["--nproc", "2", "--", sys.executable, "-c", "pass"]) == 0
