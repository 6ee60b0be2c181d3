"""Training metrics: JSON lines and TensorBoard event files, and the end-of-run plot.

Each record is {"step": int, "split": "train" | "eval" | ..., <name>: float, ...}.
On resume from step s, records after s (from the interrupted run) are dropped so
the files describe one consistent run.

tensorboardX and matplotlib (the [train] extra) are imported when first used, and the
plot is drawn on a `matplotlib.figure.Figure` of its own: importing this module or
plotting never changes the user's matplotlib backend (inline plots in Jupyter keep working).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["MetricsWriter", "NullWriter", "new_figure", "plot_training_curves", "read_metrics", "safe_exp"]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def read_metrics(path: str | os.PathLike, *, log: Callable[[str], None] | None = _stderr) -> list[dict]:
    """All records of a metrics.jsonl file (empty if it does not exist).

    A last line that is not a whole record (the write of it was cut: a full disk, a killed run) is
    dropped with a one-line notice to `log` (None: silently); a bad line before it is a ValueError
    naming the file and the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number < len(lines):
                raise ValueError(
                    f"{path} line {number} is not a JSON record ({err.msg}): {line[:80]!r}; "
                    "remove that line to use the file"
                ) from None
            if log is not None:
                log(f"warning: {path}: the last line is cut ({len(line)} characters, not a whole record): dropped")
    return records


class MetricsWriter:
    """Append records to workdir/metrics.jsonl and workdir/tensorboard/.

    resume_step: drop records with step > resume_step left by an interrupted run (and a cut last line,
    with a notice to `log`). A record of the resume step itself is not written a second time: the
    split of a step is written once (a rerun of a finished run evaluates it again for its summary).
    """

    def __init__(
        self, workdir: str | os.PathLike, resume_step: int | None = None, log: Callable[[str], None] | None = _stderr
    ):
        self.path = Path(workdir) / "metrics.jsonl"
        self._resume_step = resume_step
        self._written_at_resume: set[str] = set()  # splits already recorded at resume_step
        if resume_step is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path, log=log) if r["step"] <= resume_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            self._written_at_resume = {r["split"] for r in kept if r["step"] == resume_step}
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        from tensorboardX import SummaryWriter  # noqa: PLC0415  (the [train] extra)

        purge = None if resume_step is None else resume_step + 1
        self.tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=purge)

    def write(self, step: int, split: str, **scalars: float) -> None:
        if self._written_at_resume and step == self._resume_step and split in self._written_at_resume:
            return  # in the file (and TensorBoard) already
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in scalars.items():
            self.tb.add_scalar(f"{split}/{name}", float(value), int(step))

    def close(self) -> None:
        self.tb.close()


class NullWriter:
    """The MetricsWriter of a process other than the primary one: it writes nothing."""

    def write(self, step: int, split: str, **scalars: float) -> None:
        pass

    def close(self) -> None:
        pass


def plot_training_curves(metrics_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> None:
    """Loss (train and eval), the eval quality metric and the mean stabilizer exponent per layer over steps."""
    records = read_metrics(metrics_path)
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    stab = [r for r in records if r["split"] == "stabilizer"]
    fig = new_figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train", alpha=0.7)
    axes[0].plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="validation")
    axes[0].set(xlabel="step", ylabel="loss (nats)", title="loss")
    quality = next((k for k in ("perplexity", "accuracy", "pearson") if evals and k in evals[0]), None)
    if quality:
        values = [r[quality] for r in evals]
        axes[1].plot([r["step"] for r in evals], values, "o-", color="C1")
        if quality == "perplexity" and values and max(values) / max(min(values), 1e-9) > 20:
            axes[1].set_yscale("log")
        axes[1].set(xlabel="step", ylabel=quality, title=f"validation {quality}")
    layers = sorted({k for r in stab for k in r if k.startswith("layer")}, key=lambda k: int(k[5:]))
    for name in layers:
        axes[2].plot([r["step"] for r in stab], [r[name] for r in stab], label=name)
    axes[2].set(xlabel="step", ylabel="mean sigmoid(m)", title="stabilizer exponent per layer")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)


def new_figure(**kwargs):
    """A `matplotlib.figure.Figure` outside pyplot: no global backend, no figure manager to close;
    `fig.savefig` renders it with Agg."""
    from matplotlib.figure import Figure  # noqa: PLC0415  (the [train] extra)

    return Figure(**kwargs)


def safe_exp(x: float) -> float:
    """exp(x) that saturates instead of overflowing (perplexity of an untrained model)."""
    return math.exp(min(x, 700.0))
