"""Plots and metrics leave the user's matplotlib alone: no backend switch, no pyplot, lazy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from tests._util import REPO_ROOT

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
    done = subprocess.run([sys.executable, "-c", _CHECK, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["lazy"] == []                                    # importing metrics imports neither
    assert report["after_import"] == report["after_plot"] == "svg"
    assert report["pyplot"] is False
    assert Path(tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
