"""benchmarks/multiprocess_throughput.py --smoke: gpt-tiny at 1 process x 2 devices and 2 processes x 1
device, a few steps each. Checks the script's logic (the JSON's structure, the table), not the figures."""

import json
import os
import subprocess
import sys

import pytest

from tests._util import REPO_ROOT


@pytest.mark.slow
def test_multiprocess_throughput_smoke(tmp_path):
    out, work = tmp_path / "multiprocess.json", tmp_path / "work"
    work.mkdir()
    cmd = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "multiprocess_throughput.py"),
        "--smoke",
        "--out",
        str(out),
        "--tmp",
        str(work),
    ]
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, cwd=str(REPO_ROOT), env={**os.environ, "JAX_PLATFORMS": "cpu"}
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "multiprocess_throughput" and result["smoke"] is True
    machine = result["machine"]
    assert machine["cpu_count"] == os.cpu_count() and machine["jax"] and machine["date"] and "git_commit" in machine
    assert "not a speed claim" in result["note"] and "loopback" in result["note"]
    assert result["settings"]["preset"] == "gpt-tiny" and result["settings"]["baseline"] == "1x2"
    rows = result["rows"]
    assert [(r["processes"], r["devices_per_process"]) for r in rows] == [(1, 2), (2, 1)]
    for r in rows:
        steps, every = r["steps"], r["log_every"]
        assert r["windows_used"] == len(r["windows_tokens_per_s"]) == steps // every - 1  # the first is dropped
        assert r["median_tokens_per_s"] > 0 and all(x > 0 for x in r["windows_tokens_per_s"])
        assert r["median_step_s"] == pytest.approx(r["tokens_per_step"] / r["median_tokens_per_s"])
        assert r["ratio_to_baseline"] == pytest.approx(r["median_tokens_per_s"] / rows[0]["median_tokens_per_s"])
        assert len(r["load_before"]) == len(r["load_after"]) == 3 and r["wall_s"] > 0
    assert "| 1 x 2 |" in done.stdout and "| 2 x 1 |" in done.stdout
    assert list(work.iterdir()) == []  # the temp workdirs and data are gone
