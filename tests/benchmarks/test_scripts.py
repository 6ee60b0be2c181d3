"""The benchmark scripts (benchmarks/*.py) on tiny shapes, on the CPU: each runs end to end, writes
its results file and prints its table. What they measure is checked elsewhere; these check the
scripts' logic (rows, columns, units)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from cottention_jax.configs import train_preset
from cottention_jax.memory import train_step_memory
from tests._util import REPO_ROOT

ROOT = str(REPO_ROOT)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def test_bench_script_smoke(tmp_path):
    """bench_kernels.py --smoke: tiny shapes on CPU (interpret / xla); checks the script's logic."""
    out = tmp_path / "smoke.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_kernels.py"), "--smoke", "--out", str(out)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True and result["jax_version"] == jax.__version__
    rows = result["rows"]
    # every JAX implementation in both modes, each measured and checked against its float32 reference
    assert sorted((r["impl"], r["mode"]) for r in rows) == sorted(
        (i, m) for i in ("pallas", "xla", "softmax", "naive") for m in ("fwd", "fwd+bwd")
    )
    for r in rows:
        assert r["status"] == "ok", r
        assert r["median_ms"] > 0 and r["runs"] >= 3 and r["compiled_bytes"] > 0
        assert r["max_rel_error"] <= 5e-2, r
    assert "| impl |" in done.stdout  # the printed table


def test_decode_benchmark_script_runs(tmp_path):
    """benchmarks/decode_benchmark.py on the tiny preset: one-call and chunked prefill, the timed scan."""
    root = ROOT
    cmd = [
        sys.executable,
        os.path.join(root, "benchmarks", "decode_benchmark.py"),
        "--preset",
        "tiny",
        "--contexts",
        "32",
        "96",
        "--steps",
        "4",
        "--repeats",
        "2",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=root, env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["attention"], r["context"]) for r in rows] == [
        ("cosine", 32),
        ("cosine", 96),
        ("softmax", 32),
        ("softmax", 96),
    ]
    assert all(r["ms_per_token"] > 0 and r["state_MiB"] > 0 for r in rows)
    cosine, softmax = rows[:2], rows[2:]
    assert cosine[0]["state_MiB"] == cosine[1]["state_MiB"]  # the RNN state does not grow
    assert softmax[1]["state_MiB"] > softmax[0]["state_MiB"]  # the KV cache does
    assert "latency at 96 / latency at 32" in done.stdout


def test_train_memory_script_tabulates(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "train_memory.py"),
            "--preset",
            "gpt-tiny",
            "--tokens",
            "256",
            "--rows",
            "cosine:64:block:48",
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "| cosine | 64 | 4 | 256 | block | 48 |" in run.stdout
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["seq"], r["batch"], r["remat"], r["loss_chunk"]) for r in rows] == [(64, 4, "block", 48)]
    expected = train_step_memory(
        train_preset(
            "gpt-tiny", ["model.vocab_size=512", "model.remat=block", "model.loss_chunk=48", "model.max_len=64"]
        ),
        4,
        64,
    )
    assert rows[0]["total"] == expected["total"]  # the data's vocabulary (512), as training uses


def test_ablation_script_runs_and_tabulates(data_dir, tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "softmax_rnn_ablation.py"),
            "--preset",
            "gpt-tiny",
            "--variants",
            "softmax",
            "taylor2-gate",
            "--root",
            str(tmp_path),
            "--no-progress",
            "--set",
            f"data.data_dir={data_dir}",
            "--set",
            "steps=6",
            "--set",
            "eval_every=3",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    rows = json.loads((tmp_path / "ablation.json").read_text())
    assert [r["variant"] for r in rows] == ["softmax", "taylor2-gate"]
    assert all(r["step_memory_MiB"] > 0 and r["tokens_per_second"] > 0 and np.isfinite(r["val_loss"]) for r in rows)
    assert rows[1]["parameters"] > rows[0]["parameters"]  # the gate projection
    table = (tmp_path / "ablation.md").read_text()
    assert "| taylor2-gate |" in table and "| softmax |" in table
    assert (tmp_path / "loss_curves.png").stat().st_size > 10_000
