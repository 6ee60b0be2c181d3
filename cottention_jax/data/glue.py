"""The GLUE tasks (as TFDS names them) and their metrics, in numpy.

`TASKS` holds every GLUE classification/regression config TFDS has that has a
training split (WNLI included); `GLUE_TASKS` the eight of the Cottention paper's
table, in its column order. Each `GlueTask` names its text fields (the TFDS
features), its validation split (MNLI: "validation_matched") and its metrics,
the first being the one the leaderboard averages:

    CoLA   matthews_corrcoef            STS-B  pearson, spearman (regression)
    SST-2  accuracy                     QQP    f1, accuracy
    MRPC   f1, accuracy                 MNLI/QNLI/RTE/WNLI  accuracy

Metrics take predictions and labels as 1-D arrays of equal length N: class ids
for classification, real numbers for regression. They follow scikit-learn's and
SciPy's definitions (checked against them in tests/data/test_glue_metrics.py):
binary F1 and the Matthews correlation are 0 where their denominator is 0;
Pearson and Spearman are NaN when either input is constant; Spearman gives tied
values the average of their ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

__all__ = [
    "GLUE_TASKS",
    "METRICS",
    "TASKS",
    "GlueTask",
    "accuracy",
    "binary_f1",
    "matthews_corrcoef",
    "pearson",
    "spearman",
    "task_metrics",
]


@dataclasses.dataclass(frozen=True)
class GlueTask:
    """One GLUE task: its TFDS config name ("sst2"), the paper's title ("SST-2"), ..."""

    name: str
    title: str
    text_fields: tuple[str, ...]
    metrics: tuple[str, ...]
    validation_split: str = "validation"
    test_split: str = "test"
    is_regression: bool = False


TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", ("sentence",), ("matthews_corrcoef",)),
        GlueTask("sst2", "SST-2", ("sentence",), ("accuracy",)),
        GlueTask("mrpc", "MRPC", ("sentence1", "sentence2"), ("f1", "accuracy")),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), ("pearson", "spearman"), is_regression=True),
        GlueTask("qqp", "QQP", ("question1", "question2"), ("f1", "accuracy")),
        GlueTask(
            "mnli",
            "MNLI-m",
            ("premise", "hypothesis"),
            ("accuracy",),
            validation_split="validation_matched",
            test_split="test_matched",
        ),
        GlueTask("qnli", "QNLI", ("question", "sentence"), ("accuracy",)),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), ("accuracy",)),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), ("accuracy",)),
    )
}

GLUE_TASKS: tuple[str, ...] = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")


def _pair(predictions, labels, dtype=None) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(predictions, dtype).reshape(-1), np.asarray(labels, dtype).reshape(-1)
    if p.shape != y.shape:
        raise ValueError(f"predictions and labels must have the same length, got {p.shape[0]} and {y.shape[0]}")
    return p, y


def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to their label (NaN for N = 0)."""
    p, y = _pair(predictions, labels)
    return float(np.mean(p == y)) if len(y) else float("nan")


def binary_f1(predictions, labels, positive: int = 1) -> float:
    """F1 of class `positive`: 2 TP / (2 TP + FP + FN), 0 when there is no positive at all."""
    p, y = _pair(predictions, labels)
    tp = np.sum((p == positive) & (y == positive))
    fp = np.sum((p == positive) & (y != positive))
    fn = np.sum((p != positive) & (y == positive))
    denominator = 2 * tp + fp + fn
    return float(2 * tp / denominator) if denominator else 0.0


def matthews_corrcoef(predictions, labels) -> float:
    """Matthews correlation of class ids (binary or multi-class, Gorodkin's form), 0 when undefined.

    From the confusion matrix C (K, K): t = true counts, p = predicted counts,
    c = trace, s = N; MCC = (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)).
    """
    p, y = _pair(predictions, labels)
    classes, codes = np.unique(np.concatenate([y, p]), return_inverse=True)
    k, n = len(classes), len(y)
    confusion = np.zeros((k, k), np.float64)
    np.add.at(confusion, (codes[:n], codes[n:]), 1.0)
    t, q = confusion.sum(1), confusion.sum(0)
    c, s = np.trace(confusion), confusion.sum()
    denominator = np.sqrt((s * s - q @ q) * (s * s - t @ t))
    return float((c * s - t @ q) / denominator) if denominator else 0.0


def pearson(predictions, labels) -> float:
    """Pearson correlation in float64; NaN when either side is constant (or N < 2)."""
    p, y = _pair(predictions, labels, np.float64)
    if len(p) < 2:
        return float("nan")
    dp, dy = p - p.mean(), y - y.mean()
    denominator = np.sqrt((dp @ dp) * (dy @ dy))
    return float(np.clip((dp @ dy) / denominator, -1.0, 1.0)) if denominator else float("nan")


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N of x, tied values sharing the mean of the ranks they span."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])  # first index of each tie group
    ends = np.r_[starts[1:], len(x)]  # one past its last
    group_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(group_rank, ends - starts)
    return ranks


def spearman(predictions, labels) -> float:
    """Spearman's rank correlation: Pearson of the average ranks."""
    p, y = _pair(predictions, labels, np.float64)
    return pearson(_average_ranks(p), _average_ranks(y))


METRICS = {
    "accuracy": accuracy,
    "f1": binary_f1,
    "matthews_corrcoef": matthews_corrcoef,
    "pearson": pearson,
    "spearman": spearman,
}


def task_metrics(metric_names: Sequence[str], predictions, labels) -> dict[str, float]:
    """{name: value} for each of `metric_names` (keys of METRICS) on 1-D predictions and labels."""
    unknown = [m for m in metric_names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {name: METRICS[name](predictions, labels) for name in metric_names}
