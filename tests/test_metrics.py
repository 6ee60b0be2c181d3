"""Plots and metrics leave the user's matplotlib alone: no backend switch, no pyplot, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from cottention_jax.metrics import MetricsWriter, read_metrics
from tests._util import REPO_ROOT, fresh_key

_CHECK = r"""
import json, sys
import cottention_jax.metrics as metrics
lazy = [name for name in ("matplotlib", "tensorboardX") if name in sys.modules]
import matplotlib
matplotlib.use("svg")                       # what a user (or Jupyter's inline backend) chose
import benchmarks.ablation, cottention_jax.train   # noqa: F401  (the training modules, imported)
after_import = matplotlib.get_backend()
path = sys.argv[1]
with open(path + "/metrics.jsonl", "w") as f:
    for step in range(0, 30, 10):
        f.write(json.dumps({"step": step, "split": "train", "loss": 5.0 - step / 10}) + "\n")
        f.write(json.dumps({"step": step, "split": "eval", "loss": 5.1 - step / 10, "perplexity": 160.0 - step})
                + "\n")
        f.write(json.dumps({"step": step, "split": "stabilizer", "layer0": 0.6, "layer1": 0.62}) + "\n")
metrics.plot_training_curves(path + "/metrics.jsonl", path + "/training.png", "t")
print(json.dumps({"lazy": lazy, "after_import": after_import, "after_plot": matplotlib.get_backend(),
                  "pyplot": "matplotlib.pyplot" in sys.modules}))
"""


def test_training_modules_and_plots_never_switch_the_matplotlib_backend(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _CHECK, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["lazy"] == []  # importing metrics imports neither
    assert report["after_import"] == report["after_plot"] == "svg"
    assert report["pyplot"] is False
    assert Path(tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- a cut last line


def _random_records(n: int) -> list[dict]:
    """n records of a run, with fresh random losses (steps 0, 5, 10, ...; a train and an eval each)."""
    losses = np.asarray(jax.random.uniform(fresh_key(), (n, 2), minval=0.5, maxval=9.0), np.float64)
    return [
        r
        for i in range(n)
        for r in (
            {"step": 5 * i, "split": "train", "loss": float(losses[i, 0])},
            {"step": 5 * i, "split": "eval", "loss": float(losses[i, 1])},
        )
    ]


def _write_cut(path: Path, records: list[dict], cut_record: dict, keep_chars: int) -> None:
    """The records, then the first `keep_chars` characters of one more (a write a full disk stopped)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text + (json.dumps(cut_record) + "\n")[:keep_chars])


def test_a_cut_last_line_is_dropped_with_a_notice(tmp_path):
    records = _random_records(4)
    cut = _random_records(5)[-1]
    for keep in (1, 12, len(json.dumps(cut)) - 1):  # cut anywhere before the end of the record
        _write_cut(tmp_path / "metrics.jsonl", records, cut, keep)
        notices = []
        assert read_metrics(tmp_path / "metrics.jsonl", log=notices.append) == records
        assert len(notices) == 1 and "metrics.jsonl" in notices[0] and "cut" in notices[0], notices
        assert "\n" not in notices[0]


def test_a_bad_line_before_the_last_is_an_error_naming_it(tmp_path):
    records = _random_records(3)
    lines = [json.dumps(r) for r in records]
    lines[2] = lines[2][:10]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl line 3 is not a JSON record"):
        read_metrics(tmp_path / "metrics.jsonl")


def test_resuming_over_a_cut_last_line_keeps_the_whole_records(tmp_path):
    """A full disk while writing metrics used to make every rerun crash in MetricsWriter (JSONDecodeError)."""
    records = _random_records(4)  # steps 0..15
    _write_cut(tmp_path / "metrics.jsonl", records, _random_records(5)[-1], 20)
    notices = []
    writer = MetricsWriter(tmp_path, resume_step=10, log=notices.append)
    writer.write(11, "train", loss=1.5)
    writer.close()
    assert len(notices) == 1 and "cut" in notices[0]
    kept = [r for r in records if r["step"] <= 10]
    assert read_metrics(tmp_path / "metrics.jsonl", log=None) == [*kept, {"step": 11, "split": "train", "loss": 1.5}]
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")


def test_records_of_the_resume_step_are_not_written_twice(tmp_path):
    """A rerun of a finished run evaluates its last step again: that eval line is in the file already."""
    records = _random_records(3)  # steps 0, 5, 10
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    writer = MetricsWriter(tmp_path, resume_step=10, log=None)
    writer.write(10, "eval", loss=3.0)  # there already: not repeated
    writer.write(10, "stabilizer", layer0=0.5)  # a split not there: written
    writer.write(11, "eval", loss=2.0)
    writer.close()
    assert read_metrics(tmp_path / "metrics.jsonl") == [
        *records,
        {"step": 10, "split": "stabilizer", "layer0": 0.5},
        {"step": 11, "split": "eval", "loss": 2.0},
    ]
