"""The GLUE metrics (numpy) against scikit-learn and SciPy on random predictions; the task table; the results table."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from cottention_jax.data import glue
from cottention_jax.glue import format_glue_table


@pytest.fixture
def rng(request) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.mark.filterwarnings("ignore:A single label was found")
@pytest.mark.parametrize("n", [1, 7, 200])
def test_classification_metrics_match_sklearn(rng, n):
    for trial in range(20):
        labels = rng.integers(0, 2, n)
        # sometimes good, sometimes bad, sometimes one class only (the undefined cases)
        predictions = np.where(rng.random(n) < rng.random(), labels, rng.integers(0, 2, n))
        if trial % 5 == 0:
            predictions = np.full(n, trial % 2)
        assert glue.accuracy(predictions, labels) == pytest.approx(sklearn.metrics.accuracy_score(labels, predictions))
        assert glue.binary_f1(predictions, labels) == pytest.approx(
            sklearn.metrics.f1_score(labels, predictions, zero_division=0.0), abs=1e-12
        )
        assert glue.matthews_corrcoef(predictions, labels) == pytest.approx(
            sklearn.metrics.matthews_corrcoef(labels, predictions), abs=1e-12
        )


def test_multiclass_matthews_matches_sklearn(rng):
    for _ in range(10):
        labels = rng.integers(0, 3, 150)
        predictions = np.where(rng.random(150) < 0.6, labels, rng.integers(0, 3, 150))
        assert glue.matthews_corrcoef(predictions, labels) == pytest.approx(
            sklearn.metrics.matthews_corrcoef(labels, predictions), abs=1e-12
        )
        assert glue.accuracy(predictions, labels) == pytest.approx(sklearn.metrics.accuracy_score(labels, predictions))


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@pytest.mark.parametrize("ties", [False, True])
def test_correlations_match_scipy(rng, ties):
    for _ in range(20):
        n = int(rng.integers(3, 300))
        labels = rng.uniform(0, 5, n)
        predictions = labels * rng.normal() + rng.normal(size=n) * rng.uniform(0.1, 3)
        if ties:  # STS-B gold scores repeat; so may rounded predictions
            labels, predictions = np.round(labels), np.round(predictions, 0)
        expected_p = scipy.stats.pearsonr(predictions, labels)[0]
        expected_s = scipy.stats.spearmanr(predictions, labels)[0]
        # NaN on both sides when rounding made a side constant
        assert glue.pearson(predictions, labels) == pytest.approx(expected_p, abs=1e-9, nan_ok=True)
        assert glue.spearman(predictions, labels) == pytest.approx(expected_s, abs=1e-9, nan_ok=True)


def test_correlation_of_a_constant_is_nan_and_lengths_must_agree():
    assert np.isnan(glue.pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]))
    assert np.isnan(glue.spearman([0.0, 1.0, 2.0], [3.0, 3.0, 3.0]))
    with pytest.raises(ValueError, match="same length"):
        glue.accuracy([0, 1], [0, 1, 1])


def test_task_metrics_names_each_metric_and_refuses_unknown_ones(rng):
    labels, predictions = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
    out = glue.task_metrics(("f1", "accuracy"), predictions, labels)
    assert list(out) == ["f1", "accuracy"]
    assert out["f1"] == pytest.approx(sklearn.metrics.f1_score(labels, predictions))
    with pytest.raises(ValueError, match="bleu"):
        glue.task_metrics(("bleu",), predictions, labels)


def test_glue_table_holds_the_papers_eight_tasks_with_known_metrics():
    assert glue.GLUE_TASKS == ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
    for name in glue.GLUE_TASKS:
        task = glue.TASKS[name]
        assert set(task.metrics) <= set(glue.METRICS) and 1 <= len(task.text_fields) <= 2
    assert glue.TASKS["stsb"].is_regression and glue.TASKS["mnli"].validation_split == "validation_matched"
    assert glue.TASKS["cola"].metrics == ("matthews_corrcoef",) and glue.TASKS["qqp"].metrics == ("f1", "accuracy")


def test_results_table_in_the_papers_layout():
    results = {
        "cola": {"matthews_corrcoef": 0.5},
        "sst2": {"accuracy": 0.9},
        "mrpc": {"f1": 0.88, "accuracy": 0.84},
        "stsb": {"pearson": 0.86, "spearman": 0.85},
        "qqp": {"f1": 0.87, "accuracy": 0.9},
        "mnli": {"accuracy": 0.8},
        "qnli": {"accuracy": 0.88},
        "rte": {"accuracy": 0.6},
    }
    lines = format_glue_table(results).splitlines()
    header = lines[0]
    for title in ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI-m", "QNLI", "RTE", "Avg"):
        assert title in header
    assert header.index("CoLA") < header.index("SST-2") < header.index("RTE") < header.index("Avg")
    row = lines[-1]
    assert "50.0" in row and "88.0/84.0" in row and "86.0/85.0" in row
    # GLUE's average: one score per task, the mean of a task's metrics where it has two
    expected = np.mean([50, 90, 86, 85.5, 88.5, 80, 88, 60])
    assert row.split()[-1] == f"{expected:.1f}"
    partial = format_glue_table({"sst2": {"accuracy": 0.9}}).splitlines()[-1]
    assert "90.0" in partial and partial.split()[-1] == "-"  # no average over a partial row
