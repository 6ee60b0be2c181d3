"""benchmarks/data_pipeline.py --smoke: the data path's benchmark end to end on 2 MB and 4 MB corpora
(gpt-tiny, 2 training steps). Checks the script's logic (rows, units, the table), not the figures."""

import json
import os
import subprocess
import sys

import pytest

from tests._util import REPO_ROOT


@pytest.mark.slow
def test_data_pipeline_smoke(tmp_path):
    out, work = tmp_path / "data_pipeline.json", tmp_path / "work"
    work.mkdir()
    cmd = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "data_pipeline.py"),
        "--smoke",
        "--out",
        str(out),
        "--tmp",
        str(work),
        "--profile",
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "COTTENTION_DATA_DIR": str(tmp_path / "unused")}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=str(REPO_ROOT))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["smoke"] is True
    machine = result["machine"]
    assert machine["cpu_count"] == os.cpu_count() and machine["jax"] and machine["grain"] and machine["tokenizers"]
    rows = result["rows"]
    assert [r["size_MB"] for r in rows] == [2, 4]
    for r in rows:
        assert abs(r["corpus"]["bytes"] / 1e6 - r["size_MB"]) < 0.1  # the corpus is the size asked for
        for kind in ("prepare_given", "prepare_training"):
            p = r[kind]
            assert p["tokenizer_vocab"] == 4096 and p["tokens"] > 0 and p["documents"] == r["corpus"]["documents"]
            assert p["MB_per_s"] == pytest.approx(p["text_MB"] / p["seconds"])
            assert p["tokens_per_s"] == pytest.approx(p["tokens"] / p["seconds"])
            assert 50 < p["peak_rss_MB"] < 4000
        assert r["train"]["peak_rss_MB"] > 50 and r["train"]["reused_prepared"] is True  # training reads (a)'s data
        assert r["batches"]["tokens_per_s"] > 0 and len(r["batches"]["runs_tokens_per_s"]) == 3
    # the 4 MB corpus begins with the 2 MB one: about twice the tokens with the same tokenizer
    assert 1.7 < rows[1]["prepare_given"]["tokens"] / rows[0]["prepare_given"]["tokens"] < 2.3
    assert rows[0]["profile"]["top_by_tottime"]  # --profile: the smallest size's top costs
    s = result["summary"]
    assert s["rss_train"]["largest_minus_smallest_MB"] == pytest.approx(
        rows[1]["train"]["peak_rss_MB"] - rows[0]["train"]["peak_rss_MB"]
    )
    assert s["batches_over_step"] == pytest.approx(s["batch_tokens_per_s"] / result["step"]["tokens_per_s"])
    assert result["step"]["preset"] == "gpt-tiny" and result["step"]["steps_timed"] == 3
    assert "| 2 MB (" in done.stdout and "| 4 MB (" in done.stdout and "Batch throughput" in done.stdout
    assert list(work.iterdir()) == []  # the synthetic corpus and its data are gone
    assert not (tmp_path / "unused").exists()  # nothing went to $COTTENTION_DATA_DIR
