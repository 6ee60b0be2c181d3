"""benchmarks/compare_attention.py: the statistics against scipy, resumability, and the smoke run end to end."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from benchmarks import compare_attention as cmp
from cottention_jax.configs import train_preset
from tests._util import REPO_ROOT, fresh_key


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


def _samples(n_a, n_b):
    import jax  # noqa: PLC0415

    a, b = np.asarray(jax.random.normal(fresh_key(), (2, max(n_a, n_b))), np.float64)
    return list(4.5 + 0.05 * a[:n_a]), list(4.6 + 0.2 * b[:n_b])


@pytest.mark.parametrize("p,df", [(0.975, 1.0), (0.975, 2.0), (0.975, 3.7), (0.95, 12.3), (0.5, 4.0), (0.999, 2.5)])
def test_t_quantile_matches_scipy(p, df):
    assert cmp.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("n_a,n_b", [(3, 3), (2, 5), (4, 3)])
def test_welch_interval_and_ratio_match_scipy(n_a, n_b):
    a, b = _samples(n_a, n_b)
    w = cmp.welch_interval(a, b)
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert w["diff"] == pytest.approx(np.mean(a) - np.mean(b), rel=1e-12)
    assert (w["low"], w["high"]) == pytest.approx((ci.low, ci.high), rel=1e-6)
    r = cmp.perplexity_ratio(a, b)
    assert (r["ratio"], r["low"], r["high"]) == pytest.approx(
        (np.exp(np.mean(a) - np.mean(b)), np.exp(ci.low), np.exp(ci.high)), rel=1e-6
    )
    mean, std = cmp.mean_std(a)
    assert (mean, std) == pytest.approx((np.mean(a), np.std(a, ddof=1)), rel=1e-12)


def test_statistics_of_too_few_or_diverged_runs_are_nan_not_errors():
    assert math.isnan(cmp.mean_std([4.2])[1]) and math.isnan(cmp.mean_std([4.2, math.inf])[1])
    w = cmp.welch_interval([4.0], [4.1, 4.2])
    assert math.isnan(w["low"]) and w["diff"] == pytest.approx(-0.15)
    with pytest.raises(ValueError, match="t_quantile needs"):
        cmp.t_quantile(0.3, 2.0)


def _fake_training(calls):
    """A stand-in for train_and_evaluate: a metrics.jsonl of two evaluations and a loss set by the variant and lr."""

    def fake(config, workdir, progress=True):
        calls.append((config.model.attention, config.model.stabilizer, config.optim.learning_rate, config.seed))
        workdir.mkdir(parents=True, exist_ok=True)
        loss = 4.0 + abs(math.log10(config.optim.learning_rate) + 2.5) + 0.01 * config.seed
        loss += 0.1 * (config.model.attention == "cosine")
        records = [
            {"step": 0, "split": "eval", "loss": 6.0},
            {"step": config.steps, "split": "eval", "loss": loss},
            {"step": config.steps, "split": "train", "loss": loss, "tokens_per_second": 1000.0},
            {"step": config.steps, "split": "stabilizer", "layer0": 0.6, "layer1": 0.7},
        ]
        (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        return {"final_eval": {"loss": loss, "perplexity": math.exp(loss)}, "parameters": 10}

    return fake


def test_a_second_invocation_reruns_nothing_and_an_interrupted_run_resumes(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cmp, "train_and_evaluate", _fake_training(calls))
    base = train_preset("gpt-tiny")
    args = (base, ["softmax", "cosine-length"], [1e-3, 3e-3, 1e-2], [0, 1, 2], 8, tmp_path)
    first = cmp.run_protocol(*args, log=lambda s: None)
    assert first["trained"] == len(calls) == 2 * 3 + 2 * 2  # the sweep, then 2 more seeds per variant
    assert first["best_lr"] == {"softmax": 3e-3, "cosine-length": 3e-3}
    assert ("cosine", "length", 3e-3, 2) in calls  # the variant's fields reach the config
    again = cmp.run_protocol(*args, log=lambda s: None)
    assert again["trained"] == 0 and len(calls) == 10  # nothing re-run
    assert again["runs"] == first["runs"]
    (cmp.run_dir(tmp_path, "cosine-length", 3e-3, 1, 8) / "result.json").unlink()  # interrupted: no result yet
    third = cmp.run_protocol(*args, log=lambda s: None)
    assert third["trained"] == 1 and calls[-1] == ("cosine", "length", 3e-3, 1)
    text = cmp.write_report(third, base, [1e-3, 3e-3, 1e-2], 8, tmp_path, "gpt-tiny")
    assert "| softmax | 0.003 |" in text and "| cosine-length | 0.003 |" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["runs"]) == 10 and saved["complete"]


def test_the_budget_stops_new_runs_and_the_report_says_so(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cmp, "train_and_evaluate", _fake_training(calls))
    monkeypatch.setattr(cmp, "_clock", iter(range(0, 10_000, 100)).__next__)  # 100 s per call
    result = cmp.run_protocol(
        train_preset("gpt-tiny"), ["softmax"], [1e-3, 1e-2], [0, 1], 8, tmp_path, budget_minutes=3, log=lambda s: None
    )
    assert not result["complete"] and 0 < result["trained"] < 3


def test_command_mistakes_are_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "compare_attention.py"),
            "--variants",
            "cosine",
            "nope",
            "--root",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "nope" in proc.stderr


@pytest.mark.slow
def test_smoke_run_end_to_end_then_resumes_without_training(data_dir, tmp_path):
    cmd = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "compare_attention.py"),
        "--smoke",
        "--root",
        str(tmp_path),
        "--no-progress",
        "--set",
        f"data.data_dir={data_dir}",
    ]
    first = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "trained 6 run(s) now" in first.stdout
    saved = json.loads((tmp_path / "results.json").read_text())
    assert {r["variant"] for r in saved["summary"]} == {"softmax", "cosine"}
    assert all(np.isfinite(r["val_loss"]) for r in saved["runs"])
    cosine = next(r for r in saved["summary"] if r["variant"] == "cosine")
    assert cosine["seeds"] == 2 and "ppl_ratio" in cosine
    assert "cosine/softmax perplexity ratio" in (tmp_path / "compare.md").read_text()
    for png in ("loss_curves.png", "stabilizers.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    second = subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert "trained 0 run(s) now" in second.stdout
