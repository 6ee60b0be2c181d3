"""benchmarks/render_tables.py: the README's GPU tables from results files, between markers of a
Markdown file, on temporary files (README.md itself is never touched here)."""

import json
import subprocess
import sys

import pytest

from benchmarks import gpu_check, render_tables
from tests._util import REPO_ROOT

SCRIPT = str(REPO_ROOT / "benchmarks" / "render_tables.py")
H100 = REPO_ROOT / "benchmarks" / "results" / "nvidia-h100.json"
DOC = "# Title\n\nBefore.\n\n<!-- gpu-tables:begin -->\nold tables\n<!-- gpu-tables:end -->\n\nAfter.\n"


def _results(tmp_path) -> tuple:
    """A results file as gpu_check.py writes one, with made-up numbers."""
    bench = [
        {
            "impl": impl,
            "variant": variant,
            "mode": mode,
            "batch": 8,
            "seq": 16384,
            "heads": 16,
            "head_dim": 128,
            "dtype": "bfloat16",
            "status": "ok",
            "median_ms": ms * (2.5 if mode == "fwd+bwd" else 1.0),
            "roofline_fraction": 0.5 if impl == "pallas" else None,
        }
        for impl, variant, ms in (("pallas", "tuned defaults", 1.2), ("xla", "", 12.0), ("softmax", "cudnn", 15.0))
        for mode in ("fwd", "fwd+bwd")
    ]
    train = [
        {
            "attention": "cosine",
            "seq": 8192,
            "batch": 8,
            "status": "ok",
            "tokens_per_second": 260_000.0,
            "mfu": 0.41,
            "peak_memory_GB": 30.5,
        },
        {
            "attention": "softmax",
            "seq": 8192,
            "batch": 8,
            "status": "ok",
            "tokens_per_second": 200_000.0,
            "mfu": 0.33,
            "peak_memory_GB": 38.0,
        },
        {
            "attention": "cosine",
            "seq": 32768,
            "batch": 2,
            "status": "ok",
            "tokens_per_second": 250_000.0,
            "mfu": 0.4,
            "peak_memory_GB": 31.0,
        },
        {"attention": "softmax", "seq": 32768, "batch": 2, "status": "oom: RESOURCE_EXHAUSTED", "peak_memory_GB": 80.0},
    ]
    decode = [
        {"attention": "cosine", "context": 1024, "ms_per_token": 4.0},
        {"attention": "cosine", "context": 32768, "ms_per_token": 4.2},
        {"attention": "softmax", "context": 1024, "ms_per_token": 5.0},
        {"attention": "softmax", "context": 32768, "status": "timeout"},
    ]
    result = {
        "format": gpu_check.FORMAT,
        "version": 1,
        "dry_run": False,
        "device": "NVIDIA H200",
        "provenance": "benchmarks/gpu_check.py",
        "machine": {
            "python": "3.12.3",
            "jax": "0.12.0",
            "jaxlib": "0.12.0",
            "flax": "0.12.12",
            "triton": "3.6",
            "date": "2026-12-05T10:00:00+00:00",
            "git_commit": "0123456789abcdef",
            "git_dirty": False,
        },
        "probe": {"status": "ok", "compute_capability": "9.0"},
        "stages": {
            "tune": {"status": "ok", "results": {"entries": []}},
            "bench": {"status": "ok", "results": {"peak_bandwidth_bytes_per_s": 4.8e12, "rows": bench}},
            "tests": {
                "status": "failed",
                "results": {
                    "counts": {"passed": 40, "failure": 1},
                    "tests": [
                        {"test": "tests.k::test_core", "outcome": "passed", "seconds": 28.0},
                        {"test": "tests.k::test_bad", "outcome": "failure", "seconds": 2.0},
                    ],
                },
            },
            "train": {"status": "ok", "results": {"rows": train}},
            "decode": {"status": "partial", "results": {"rows": decode, "ratios": gpu_check.decode_ratios(decode)}},
        },
    }
    path = tmp_path / "nvidia-h200.json"
    path.write_text(json.dumps(result))
    return path, result


def test_the_region_between_the_markers_is_replaced_and_nothing_else(tmp_path):
    results, _ = _results(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text(DOC)
    done = subprocess.run(
        [sys.executable, SCRIPT, str(results), "--markdown", str(doc)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text = doc.read_text()
    head, rest = text.split(render_tables.BEGIN)
    body, tail = rest.split(render_tables.END)
    assert head == "# Title\n\nBefore.\n\n" and tail == "\n\nAfter.\n" and "old tables" not in body
    # device, versions, date and commit
    assert "**NVIDIA H200** (compute capability 9.0) on 2026-12-05, at commit `0123456`" in body
    assert "jax 0.12.0" in body and "triton 3.6" in body
    # the kernels: times, roofline, and the speed-up the rows give (xla 30 ms / pallas 3 ms)
    assert "| pallas (tuned defaults) | 16,384 | 1.20 | 3.00 | 50% | - |" in body
    assert f"| xla | 16,384 | 12.00 | 30.00 | - | {30.0 / 3.0:.1f}× |" in body
    assert "4.80 TB/s" in body
    # training: tokens/s, MFU, peak memory, the ratio; an out-of-memory row says so
    assert f"| 8,192 × 8 | 260,000 | 41.0% | 30.5 | 200,000 | 33.0% | 38.0 | {260 / 200:.2f}× |" in body
    assert "| 32,768 × 2 | 250,000 | 40.0% | 31.0 | oom | - | 80.0 | - |" in body
    # decoding, with a row that timed out, and the latency ratio
    assert "| 32,768 | 4.20 | timeout |" in body and f"cosine 32,768 / 1,024: {4.2 / 4.0:.2f}×" in body
    assert "1 failure, 40 passed" in body and "`tests.k::test_bad`" in body
    # a second run gives the same file
    subprocess.run([sys.executable, SCRIPT, str(results), "--markdown", str(doc)], check=True, timeout=60)
    assert doc.read_text() == text


@pytest.mark.parametrize(
    "text", ["# no markers\n", DOC.replace(render_tables.END, ""), DOC + render_tables.BEGIN + "\n"]
)
def test_a_file_without_one_pair_of_markers_is_refused_in_one_line(tmp_path, text):
    results, _ = _results(tmp_path)
    doc = tmp_path / "doc.md"
    doc.write_text(text)
    done = subprocess.run(
        [sys.executable, SCRIPT, str(results), "--markdown", str(doc)], capture_output=True, text=True, timeout=60
    )
    assert (
        done.returncode == 2 and done.stderr.count("\n") == 1 and "needs one line <!-- gpu-tables:begin" in done.stderr
    )
    assert doc.read_text() == text


def test_a_file_that_is_not_a_results_file_is_refused(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"rows": []}))
    done = subprocess.run([sys.executable, SCRIPT, str(bad), "--print"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"{bad}: not a 'cottention-jax gpu results' file" in done.stderr


def test_stages_without_results_say_why(tmp_path):
    _, result = _results(tmp_path)
    result["stages"]["decode"] = {"status": "skipped", "reason": "the budget of 540 s is spent"}
    del result["stages"]["train"]
    text = render_tables.render(result, "x.json")
    assert "No table (stage skipped: the budget of 540 s is spent)." in text
    assert "No table (stage not run)." in text


def test_the_h100_record_renders(tmp_path):
    """benchmarks/results/nvidia-h100.json (transcribed from the H100 session's notes) is a results file."""
    result = render_tables.load(H100)
    assert "shared/gpu/h100-2026-11-24.md" in result["provenance"]
    body = render_tables.render(result, "benchmarks/results/nvidia-h100.json")
    assert "| pallas (chunk 64, blocks 64, 4 warps, 2 stages) | 16,384 | 1.34 | 3.05 | 58% | - |" in body
    assert "| fla (chunk_linear_attn 0.6.0) | 16,384 | 1.99 | 8.99 | 20% | 2.9× |" in body
    assert "at commit `40588c5`" in body
