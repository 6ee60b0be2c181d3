"""benchmarks/gpu_check.py: the GPU pass's driver, rehearsed on the CPU (--dry-run), its budget, its
process handling and how it reads what the stages wrote. What the stages measure is tested with the
scripts themselves (test_scripts.py); here, that the pass runs them, stops them and records them."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from benchmarks import gpu_check
from tests._util import REPO_ROOT

SCRIPT = str(REPO_ROOT / "benchmarks" / "gpu_check.py")
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
ENV.pop("OUT", None)


def _run(*args, timeout=600):
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=ENV, cwd=REPO_ROOT
    )


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_records_it(tmp_path):
    """The whole pass on the CPU at toy sizes: every stage ok, each one's results in the JSON, and the
    output folder within what a device machine sends back (8 files)."""
    done = _run("--dry-run", "--budget", "900", "--out", str(tmp_path), timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "cpu.json").read_text())
    assert report["format"] == gpu_check.FORMAT and report["dry_run"] is True
    assert report["probe"]["status"] == "ok" and report["device"] == "cpu"
    assert report["machine"]["jax"] and report["machine"]["python"]
    assert list(report["stages"]) == list(gpu_check.STAGES)
    assert {name: stage["status"] for name, stage in report["stages"].items()} == dict.fromkeys(gpu_check.STAGES, "ok")
    stages = {name: stage["results"] for name, stage in report["stages"].items()}
    # 1. the tuned row is merged into a copy of the shipped table, which the later stages read
    table = json.loads((tmp_path / gpu_check.TABLE).read_text())["entries"]
    shipped = json.loads(gpu_check.SHIPPED_TABLE.read_text())["entries"]
    assert table[: len(shipped)] == shipped or all(e in table for e in shipped)
    assert [(e["device"], e["head_dim"]) for e in stages["tune"]["entries"]] == [("cpu", 16)]
    # 2. every implementation in both modes, ok, with the ratios to pallas
    assert {(r["impl"], r["mode"], r["status"]) for r in stages["bench"]["rows"]} >= {
        (i, m, "ok") for i in ("pallas", "xla", "softmax") for m in ("fwd", "fwd+bwd")
    }
    assert {(r["mode"], tuple(sorted(r["speedup_over"]))) for r in stages["bench"]["ratios"]} == {
        ("fwd", ("softmax", "xla")),
        ("fwd+bwd", ("softmax", "xla")),
    }
    # 3. the gpu tests ran (skipped on a CPU), each listed
    assert stages["tests"]["counts"].get("skipped", 0) == len(stages["tests"]["tests"]) > 0
    # 4. both attentions trained, with the FLOP formula; 5. both decoded
    assert [(r["attention"], r["status"]) for r in stages["train"]["rows"]] == [("cosine", "ok"), ("softmax", "ok")]
    assert all(r["tokens_per_second"] > 0 and r["model_flops_per_step"] > 0 for r in stages["train"]["rows"])
    assert "Matmuls: 6 x" in stages["train"]["flop_formula"]
    assert [(r["attention"], r["status"]) for r in stages["decode"]["rows"]] == [("cosine", "ok"), ("softmax", "ok")]
    assert all(r["ms_per_token"] > 0 for r in stages["decode"]["rows"])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == sorted(
        ["cpu.json", gpu_check.TABLE, "1-tune.log", "2-bench.log", "3-tests.log", "4-train.log", "5-decode.log"]
    )
    assert "=== d=16: ok" in (tmp_path / "1-tune.log").read_text()


def test_a_spent_budget_skips_the_remaining_stages_and_still_writes_the_json(tmp_path):
    """8 s: the probe takes some, a stage or two may start and be stopped at its deadline, and the last
    stage (which could start only with 5 s left after the others' deadlines) is skipped."""
    done = _run("--dry-run", "--budget", "8", "--out", str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = [p for p in tmp_path.glob("*.json") if p.name != gpu_check.TABLE]  # cpu.json, unless the probe
    report = json.loads(path.read_text())  # itself ran out of time
    assert list(report["stages"]) == list(gpu_check.STAGES)
    assert all(
        stage["status"] in ("ok", "partial", "timeout", "failed", "skipped") for stage in report["stages"].values()
    )
    last = report["stages"]["decode"]
    assert last["status"] == "skipped" and "budget of 8 s is spent" in last["reason"]
    assert report["elapsed_s"] < 8 + 30  # stopped, not run to the end


def test_sigterm_stops_the_running_step_and_writes_what_there_is(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, "--dry-run", "--budget", "900", "--out", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        cwd=REPO_ROOT,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (tmp_path / "1-tune.log").exists():
        time.sleep(0.5)  # the tune stage's step has started
    assert (tmp_path / "1-tune.log").exists(), proc.stdout.read() if proc.poll() is not None else "no tune step"
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-3000:]
    report = json.loads((tmp_path / "cpu.json").read_text())
    assert report["stopped"] == "SIGTERM" and list(report["stages"]) == list(gpu_check.STAGES)
    statuses = [(stage["status"], stage["reason"]) for stage in report["stages"].values()]
    assert statuses == [("stopped", "stopped by SIGTERM")] + [("skipped", "stopped by SIGTERM")] * 4
    assert report["stages"]["tune"]["log"] == "1-tune.log"


def test_without_a_gpu_and_without_dry_run_it_says_so_in_one_line(tmp_path):
    done = _run("--budget", "120", "--out", str(tmp_path), timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "not a GPU: use --dry-run" in done.stderr
    assert all(s["status"] == "skipped" for s in json.loads((tmp_path / "cpu.json").read_text())["stages"].values())


def test_bad_budget_is_one_line():
    done = _run("--budget", "0", timeout=60)
    assert done.returncode == 2 and "--budget must be > 0 seconds; got 0.0" in done.stderr
    assert "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- steps under a clock


def test_a_step_past_its_timeout_is_stopped_with_every_process_it_started(tmp_path):
    pid_file = tmp_path / "child.pid"
    code = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(120)
    """)
    step = gpu_check.Step("sleeper", [sys.executable, "-c", code])
    result = gpu_check.run_step(step, 3.0, tmp_path / "x.log", ENV)
    assert result["status"] == "timeout" and result["rc"] is None
    stat = f"/proc/{int(pid_file.read_text())}/stat"  # the grandchild went with its parent's group:
    time.sleep(0.5)  # gone, or a zombie nobody has reaped yet
    assert not os.path.exists(stat) or open(stat).read().rsplit(")", 1)[1].split()[0] == "Z"
    assert "=== sleeper: timeout" in (tmp_path / "x.log").read_text()


@pytest.mark.parametrize(
    "message, status",
    [("RESOURCE_EXHAUSTED: Out of memory while trying to allocate", "oom"), ("ValueError: something else", "failed")],
)
def test_a_failing_step_is_failed_or_oom(tmp_path, message, status):
    step = gpu_check.Step("bad", [sys.executable, "-c", f"import sys; print({message!r}); sys.exit(1)"])
    assert gpu_check.run_step(step, 60.0, tmp_path / "x.log", ENV)["status"] == status


def test_steps_share_the_stage_time_by_weight_and_none_starts_without_time(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(
        gpu_check,
        "run_step",
        lambda step, timeout, log, env: seen.append((step.name, timeout)) or {"status": "ok", "rc": 0, "seconds": 0.0},
    )
    steps = [gpu_check.Step("a", [], weight=3.0), gpu_check.Step("b", []), gpu_check.Step("c", [])]
    record = gpu_check.run_stage("tune", steps, time.monotonic() + 100.0, tmp_path / "x.log", ENV)
    assert [name for name, _ in seen] == ["a", "b", "c"] and record["status"] == "ok"
    assert 59 < seen[0][1] <= 60 and 49 < seen[1][1] <= 50 and 99 < seen[2][1] <= 100  # 3/5; then 1/2; the rest
    seen.clear()
    record = gpu_check.run_stage("tune", steps, time.monotonic() + 2.0, tmp_path / "x.log", ENV)
    assert seen == [] and record["status"] == "skipped"


@pytest.mark.parametrize(
    "stage, statuses, expected",
    [
        ("bench", ["ok", "ok"], "ok"),
        ("bench", ["ok", "timeout"], "partial"),
        ("bench", ["timeout", "skipped"], "timeout"),
        ("bench", ["failed"], "failed"),
        ("train", ["ok", "oom"], "ok"),
        ("decode", ["ok", "oom"], "partial"),
        ("tests", ["skipped"], "skipped"),
    ],
)
def test_stage_status(stage, statuses, expected):
    assert gpu_check.stage_status(stage, statuses) == expected


# ----------------------------------------------------------------------------- reading the results


def test_ratios_from_rows():
    rows = [
        {"impl": impl, "mode": "fwd+bwd", "seq": 16384, "median_s": s, "status": "ok", "roofline_fraction": f}
        for impl, s, f in (("pallas", 0.003, 0.6), ("xla", 0.03, 0.06), ("softmax", 0.057, None))
    ]
    rows.append({"impl": "fla", "mode": "fwd+bwd", "seq": 16384, "status": "not run: no fla"})
    (ratio,) = gpu_check.kernel_ratios(rows)
    assert ratio["speedup_over"] == pytest.approx({"xla": 0.03 / 0.003, "softmax": 0.057 / 0.003})
    assert ratio["roofline_fraction"] == 0.6 and ratio["pallas_ms"] == pytest.approx(3.0)
    train = [
        {"attention": "cosine", "seq": 8192, "tokens_per_second": 260.0, "status": "ok"},
        {"attention": "softmax", "seq": 8192, "tokens_per_second": 200.0, "status": "ok"},
        {"attention": "cosine", "seq": 32768, "tokens_per_second": 250.0, "status": "ok"},
        {"attention": "softmax", "seq": 32768, "status": "oom"},
    ]
    assert gpu_check.throughput_ratios(train) == [{"seq": 8192, "cosine_over_softmax": pytest.approx(1.3)}]
    decode = [{"attention": "cosine", "context": c, "ms_per_token": ms} for c, ms in ((1024, 2.0), (32768, 2.1))]
    decode.append({"attention": "softmax", "context": 1024, "status": "timeout"})
    assert gpu_check.decode_ratios(decode) == {
        "cosine": {"longest_over_shortest": pytest.approx(1.05), "contexts": [1024, 32768]}
    }


def test_junit_summary_lists_each_test_slowest_first(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text("""<?xml version="1.0"?><testsuites><testsuite>
      <testcase classname="tests.a" name="t_fast" time="0.5"/>
      <testcase classname="tests.a" name="t_slow" time="28.0"/>
      <testcase classname="tests.b" name="t_bad" time="1.0"><failure message="x"/></testcase>
      <testcase classname="tests.b" name="t_skip" time="0.0"><skipped message="no gpu"/></testcase>
    </testsuite></testsuites>""")
    summary = gpu_check.junit_summary(xml)
    assert summary["counts"] == {"passed": 2, "failure": 1, "skipped": 1}
    assert [t["test"] for t in summary["tests"]] == [
        "tests.a::t_slow",
        "tests.b::t_bad",
        "tests.a::t_fast",
        "tests.b::t_skip",
    ]
    assert gpu_check.junit_summary(tmp_path / "missing.xml") == {"counts": {}, "tests": []}


def test_device_slug():
    assert gpu_check.device_slug("NVIDIA H200") == "nvidia-h200"
    assert gpu_check.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert gpu_check.device_slug(None) == "unknown-device"


def test_output_folder_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("OUT", str(tmp_path))
    assert gpu_check.parse_args([]).out == tmp_path  # a device machine's $OUT
    monkeypatch.delenv("OUT")
    assert gpu_check.parse_args([]).out.parent == REPO_ROOT / "benchmarks" / "results"
    rehearsal = gpu_check.parse_args(["--dry-run"]).out  # nothing left in the checkout
    assert not rehearsal.resolve().is_relative_to(REPO_ROOT)
    rehearsal.rmdir()
    assert gpu_check.parse_args(["--stages", "decode", "tune"]).stages == ["tune", "decode"]  # always in order
