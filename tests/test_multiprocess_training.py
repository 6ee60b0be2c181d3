"""Training over several real processes on this machine (jax.distributed, gloo collectives), through
cottention-launch: the same losses as one process with all the devices, checkpoints that resume on
another process count, SIGTERM to every process, and a killed process."""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cottention_jax.metrics import read_metrics
from cottention_jax.workdir_lock import LOCK_FILE
from tests._util import REPO_ROOT

pytestmark = pytest.mark.slow

STEPS = 16
MODES = {"data": ["sharding=data"], "fsdp": ["sharding=fsdp"], "data-seq": ["sharding=data", "seq_parallel=2"]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _env(devices: int | None = None) -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COTTENTION_COORDINATOR", "COTTENTION_NUM", "COTTENTION_PROCESS", "XLA_FLAGS"))
    }
    env.update(PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _train_args(workdir, data_dir, mode) -> list[str]:
    sets = [
        f"data.data_dir={data_dir}",
        f"steps={STEPS}",
        "log_every=1",
        "eval_every=8",
        "eval_batches=1",
        "checkpoint_every=5",
        "sample_tokens=0",
        *MODES[mode],
    ]
    return [
        sys.executable,
        str(REPO_ROOT / "experiments" / "train_gpt.py"),
        "--preset",
        "gpt-tiny",
        "--no-progress",
        "--workdir",
        str(workdir),
        *sum((["--set", s] for s in sets), []),
    ]


def _launch(nproc: int, per_process: int, args: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cottention_jax.launch",
        "--nproc",
        str(nproc),
        "--devices-per-process",
        str(per_process),
        "--",
        *args,
    ]


def _run(cmd, env, timeout=300) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def _curves(workdir) -> dict:
    """{(split, step): (loss, grad_norm or nan)} of a run's metrics.jsonl; each record once."""
    records = [r for r in read_metrics(Path(workdir) / "metrics.jsonl") if r["split"] in ("train", "eval")]
    keys = [(r["split"], r["step"]) for r in records]
    assert len(keys) == len(set(keys)), "a record was written twice (a process other than 0 wrote metrics)"
    return {(r["split"], r["step"]): (r["loss"], r.get("grad_norm", np.nan)) for r in records}


def _assert_same(got: dict, want: dict, steps) -> None:
    for key in [k for k in want if k[1] in steps]:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-6, err_msg=str(key))


@functools.cache
def _one_process_run(mode: str, data_dir: str, root: str) -> dict:
    """The reference: one process with all 8 devices (cached per mode for the module)."""
    workdir = Path(root) / f"one-{mode}"
    _run(_train_args(workdir, data_dir, mode), _env(8))
    return _curves(workdir)


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("reference"))
    return lambda mode: _one_process_run(mode, data_dir, root)


@pytest.mark.parametrize("mode", list(MODES))
def test_two_processes_train_exactly_like_one(mode, data_dir, reference, tmp_path):
    """2 processes x 4 devices: the losses, gradient norms and evaluations of 1 process x 8 devices."""
    run = _run(_launch(2, 4, _train_args(tmp_path / "two", data_dir, mode)), _env())
    got = _curves(tmp_path / "two")
    assert sorted(s for split, s in got if split == "train") == list(range(1, STEPS + 1))
    _assert_same(got, reference(mode), range(STEPS + 1))
    lines = run.stdout.splitlines()
    assert any(line.startswith("[0] step") for line in lines)
    assert not [line for line in lines if line.startswith("[1] ") and "step" in line]  # only process 0 logs
    assert (tmp_path / "two" / "summary.json").is_file() and not (tmp_path / "two" / LOCK_FILE).exists()


def test_sigterm_to_every_process_saves_and_the_checkpoint_resumes_on_two_or_one_process(data_dir, reference, tmp_path):
    """SIGTERM (through the launcher, to both processes) after step 6: both stop at one step, save it,
    release the lock and exit 143; the checkpoint then resumes with 2 processes, and with 1 process of 8
    devices, each giving the uninterrupted run's losses."""
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(
        _launch(2, 4, _train_args(stopped, data_dir, "data")),
        env=_env(),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(r["split"] == "train" and r["step"] >= 6 for r in read_metrics(stopped / "metrics.jsonl")):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    said = [line for line in out.splitlines() if "stopped by SIGTERM after step" in line]
    steps = {int(line.split("after step ")[1].split(":")[0]) for line in said}
    assert len(said) == 2 and len(steps) == 1, said  # both processes, at one step
    (step,) = steps
    assert step < STEPS and (stopped / "checkpoints" / str(step)).is_dir()
    assert not (stopped / LOCK_FILE).exists()

    want = reference("data")
    on_one = tmp_path / "on-one"
    shutil.copytree(stopped, on_one)
    _run(_launch(2, 4, _train_args(stopped, data_dir, "data")), _env())
    _run(_train_args(on_one, data_dir, "data"), _env(8))
    for workdir in (stopped, on_one):
        _assert_same(_curves(workdir), want, range(step + 1, STEPS + 1))


def test_a_killed_process_stops_the_other_within_a_bound(data_dir, tmp_path):
    """SIGKILL to process 1: process 0 exits non-zero within a minute (no hang; a heartbeat timeout of
    10 s, not the default 60, bounds it); a rerun resumes from the last intact checkpoint and finishes."""
    from cottention_jax.launch import free_port  # noqa: PLC0415

    workdir = tmp_path / "killed"
    port = free_port()
    procs = []
    for rank in range(2):
        env = {
            **_env(4),
            "COTTENTION_COORDINATOR": f"127.0.0.1:{port}",
            "COTTENTION_NUM_PROCESSES": "2",
            "COTTENTION_PROCESS_ID": str(rank),
        }
        procs.append(
            subprocess.Popen(
                [*_train_args(workdir, data_dir, "data"), "--heartbeat-timeout", "10"],
                env=env,
                cwd=REPO_ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and procs[1].poll() is None:
            if any(r["split"] == "train" and r["step"] >= 7 for r in read_metrics(workdir / "metrics.jsonl")):
                break
            time.sleep(0.05)
        procs[1].kill()
        killed_at = time.time()
        _, err = procs[0].communicate(timeout=90)
        assert procs[0].returncode != 0 and time.time() - killed_at < 60, err[-2000:]
        if procs[0].returncode == 1:  # a collective failed in Python (else JAX's heartbeat aborted it: 134)
            assert "[rank 0] lost another process of the run" in err, err[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    run = _run(_launch(2, 4, _train_args(workdir, data_dir, "data")), _env())
    resumed = [line for line in run.stdout.splitlines() if "resumed from step" in line]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1]) % 5 == 0, run.stdout[-2000:]
    assert (workdir / "summary.json").is_file()
