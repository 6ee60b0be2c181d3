"""The GPU pass: every figure the README claims, measured by one command within a time budget.

    python benchmarks/gpu_check.py                      # on a CUDA machine (make gpu-check); 9 minutes
    python benchmarks/gpu_check.py --budget 300 --stages bench train
    python benchmarks/gpu_check.py --dry-run            # the same stages on the CPU: toy sizes, interpret mode

After a short probe of the device, five stages run in this order, each step of a
stage in a process of its own (the existing benchmark scripts, run as files)
under its own timeout:

  1. tune    experiments/tune_kernels.py --quick, D = 128 then 64, bf16 (chunk 64:
             the H100 sweep's best; 128 ran out of shared memory there), written
             into <out>/tuned_block_sizes.json: a copy of the shipped table plus this
             device's rows. Every later stage reads it ($COTTENTION_KERNEL_TABLE).
  2. bench   benchmarks/bench_kernels.py at B=8 H=16 D=128 bf16, T = 16K and 64K:
             the defaults just written against xla and cuDNN softmax, and
             flash-linear-attention when `fla` is importable.
  3. tests   pytest -m gpu, with each test's duration (from a JUnit XML report); --dry-run: one file's.
  4. train   benchmarks/train_throughput.py, gpt-300m, cosine vs softmax at
             seq 2K x 32, 8K x 8, 32K x 2: tokens/s, MFU (its FLOP formula is
             copied into the JSON) and the device's peak memory, one process per
             row; an out-of-memory row is recorded as "oom".
  5. decode  benchmarks/decode_benchmark.py, gptj-300m bf16, ms/token at
             contexts 1K, 8K, 32K, cosine vs softmax, one process per row.

Budget. The stages share what is left of --budget after the probe: tune 30%,
bench 15%, tests 15%, train 25%, decode 15%, as deadlines on one clock, so time a
stage leaves unused goes to the next ones. Within a stage the steps split the
stage's remaining time by weight. A step that runs past its time is stopped (its
whole process group); a step is given at least 5 s and is not started with less;
once the budget is spent the remaining stages are recorded as skipped. SIGTERM / SIGINT
stop the running step: its stage is recorded as stopped, with the steps that
ended, and the rest as skipped. Step statuses: ok, failed, oom, timeout, skipped;
stage statuses: ok, partial, failed, timeout, skipped, stopped.

Output, in --out (default $OUT when set, else benchmarks/results/gpu-check-<date>;
for --dry-run a temporary folder),
at most 8 files (what a device machine sends back):
  <device>.json            every stage: status, seconds, steps, results (the format
                           benchmarks/render_tables.py turns into README tables);
                           rewritten after every stage, so a killed run keeps what it had
  tuned_block_sizes.json   the shipped table with this device's tuned rows merged in
  1-tune.log ... 5-decode.log   each stage's output
--dry-run runs every stage on the CPU at toy sizes (Pallas in interpret mode).
To publish: copy <device>.json to benchmarks/results/ and tuned_block_sizes.json over
pallas_kernels/cosine_attn/tuned_block_sizes.json, then run benchmarks/render_tables.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/gpu_check.py`: import `benchmarks` from the root
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_facts  # noqa: E402  (jax-free: this process never holds the GPU)

FORMAT, VERSION = "cottention-jax gpu results", 1
STAGES = ("tune", "bench", "tests", "train", "decode")
SHARES = {"tune": 0.30, "bench": 0.15, "tests": 0.15, "train": 0.25, "decode": 0.15}
PROBE_SECONDS = 60.0
MIN_STEP_SECONDS = 5.0
PACKAGES = (
    "jax",
    "jaxlib",
    "jax-cuda12-plugin",
    "jax-cuda13-plugin",
    "jax-cuda13-pjrt",
    "flax",
    "optax",
    "triton",
    "jax-triton",
    "torch",
    "fla-core",
    "flash-linear-attention",
)
TABLE = "tuned_block_sizes.json"
SHIPPED_TABLE = ROOT / "pallas_kernels" / "cosine_attn" / TABLE
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM")

# The probe: what the device is (and nothing held: no preallocation).
PROBE = """
import json, jax
from benchmarks.measure import describe_device
from cottention_jax import softmax_ops
d = jax.devices()[0]
stats = d.memory_stats() if d.platform != "cpu" else None
info = {**describe_device(), "device_kind": d.device_kind,
        "compute_capability": getattr(d, "compute_capability", None),
        "memory_bytes_limit": (stats or {}).get("bytes_limit"),
        "softmax_implementation_bf16_d64": softmax_ops.default_implementation("bfloat16", 64)}
print("PROBE " + json.dumps(info))
"""


@dataclasses.dataclass
class Step:
    """One process of a stage: its command, what it measures, its share of the stage's time."""

    name: str
    cmd: list[str]
    out: pathlib.Path | None = None  # the JSON file it writes, if any
    weight: float = 1.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the stages measure: the real shapes, or --dry-run's toy ones."""

    tune: tuple[str, ...]  # tune_kernels.py arguments (without --head-dims / --out)
    tune_dims: tuple[int, ...]
    bench: tuple[tuple[str, ...], ...]  # one bench_kernels.py argument list per step
    train: tuple[str, ...]  # train_throughput.py arguments (without --seq-lens / --attention)
    train_seqs: tuple[int, ...]
    decode: tuple[str, ...]
    decode_contexts: tuple[int, ...]
    test_paths: tuple[str, ...] = ("tests",)  # what `pytest -m gpu` collects, relative to the checkout


def sizes(dry_run: bool, fla: bool) -> Sizes:
    if dry_run:
        return Sizes(
            tune=("--smoke",),
            tune_dims=(16,),
            bench=(("--smoke",),),
            train=("--preset", "gpt-tiny", "--tokens", "128", "--repeats", "2"),
            train_seqs=(32,),
            decode=("--preset", "tiny", "--dtype", "bfloat16", "--steps", "4", "--repeats", "2"),
            decode_contexts=(32,),
            # one file of GPU-marked tests: collecting the whole suite only to skip it costs minutes
            test_paths=("tests/kernels/test_pallas_kernels.py",),
        )
    impls = ("pallas", "xla", "softmax", *(("fla",) if fla else ()))
    bench = tuple(
        (
            "--seqs",
            str(t),
            "--dims",
            "128",
            "--batch",
            "8",
            "--heads",
            "16",
            "--dtype",
            "bfloat16",
            "--impls",
            *impls,
            "--warmup",
            "3",
            "--repeats",
            "10",
        )
        for t in (16384, 65536)
    )
    return Sizes(
        tune=("--quick", "--dtype", "bfloat16", "--chunks", "64", "--repeats", "5"),
        tune_dims=(128, 64),
        bench=bench,
        train=("--preset", "gpt-300m", "--tokens", "65536", "--repeats", "5"),
        train_seqs=(2048, 8192, 32768),
        decode=("--preset", "gptj-300m", "--dtype", "bfloat16", "--steps", "32", "--repeats", "3"),
        decode_contexts=(1024, 8192, 32768),
    )


def plan(stage: str, size: Sizes, out: pathlib.Path, scratch: pathlib.Path) -> list[Step]:
    """The steps of one stage."""
    py = sys.executable
    if stage == "tune":  # D = 128 (the target shape) first, with the larger share: more launches
        return [
            Step(
                f"d={d}",
                [
                    py,
                    str(ROOT / "experiments" / "tune_kernels.py"),
                    *size.tune,
                    "--head-dims",
                    str(d),
                    "--out",
                    str(out / TABLE),
                ],
                weight=1.5 if d >= 128 else 1.0,
            )
            for d in size.tune_dims
        ]
    if stage == "bench":
        return [
            Step(
                f"bench-{i}",
                [py, str(ROOT / "benchmarks" / "bench_kernels.py"), *args, "--out", str(scratch / f"bench-{i}.json")],
                out=scratch / f"bench-{i}.json",
            )
            for i, args in enumerate(size.bench)
        ]
    if stage == "tests":
        junit = scratch / "junit.xml"
        return [
            Step(
                "pytest -m gpu",
                [
                    py,
                    "-m",
                    "pytest",
                    "-m",
                    "gpu",
                    "--durations=0",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    f"--junitxml={junit}",
                    *(str(ROOT / path) for path in size.test_paths),
                ],
                out=junit,
            )
        ]
    if stage == "train":
        return [
            Step(
                f"{attention} seq {seq}",
                [
                    py,
                    str(ROOT / "benchmarks" / "train_throughput.py"),
                    *size.train,
                    "--seq-lens",
                    str(seq),
                    "--attention",
                    attention,
                    "--out",
                    str(scratch / f"train-{attention}-{seq}"),
                ],
                out=scratch / f"train-{attention}-{seq}" / "results.json",
            )
            for seq in size.train_seqs
            for attention in ("cosine", "softmax")
        ]
    if stage == "decode":
        return [
            Step(
                f"{attention} context {c}",
                [
                    py,
                    str(ROOT / "benchmarks" / "decode_benchmark.py"),
                    *size.decode,
                    "--contexts",
                    str(c),
                    "--attention",
                    attention,
                    "--out",
                    str(scratch / f"decode-{attention}-{c}"),
                ],
                out=scratch / f"decode-{attention}-{c}" / "results.json",
            )
            for c in size.decode_contexts
            for attention in ("cosine", "softmax")
        ]
    raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")


# ----------------------------------------------------------------------------- running under a clock


class Stopped(Exception):
    """SIGTERM / SIGINT: stop the running step and write what there is."""


def _on_signal(signum, frame):
    raise Stopped(signal.Signals(signum).name)


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a step and every process it started (it leads its own session)."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, timeout: float, log: pathlib.Path, env: dict) -> dict:
    """Run one step with a timeout, appending its output to `log`: {"status", "rc", "seconds"}.
    status: ok, failed (non-zero exit), oom (a failure that says so) or timeout."""
    start = time.monotonic()
    with log.open("a") as f:
        f.write(f"\n=== {step.name}: {' '.join(step.cmd)}  (timeout {timeout:.0f} s)\n")
        f.flush()
        proc = subprocess.Popen(step.cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            rc, status = None, "timeout"
        finally:
            if proc.poll() is None:  # Stopped (a signal) while waiting
                _kill_group(proc)
        seconds = time.monotonic() - start
        f.write(f"=== {step.name}: {status} (rc {rc}) after {seconds:.1f} s\n")
    if status == "failed" and any(m in _tail(log, 20_000) for m in OOM_MARKERS):
        status = "oom"
    return {"status": status, "rc": rc, "seconds": round(seconds, 1)}


def _tail(path: pathlib.Path, chars: int) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


def run_stage(
    stage: str, steps: list[Step], deadline: float, log: pathlib.Path, env: dict, results: list[dict] | None = None
) -> dict:
    """Run a stage's steps in order, each with its weighted share of the time left before `deadline`.
    Each step's outcome is appended to `results` as it ends (what a signal leaves behind)."""
    start = time.monotonic()
    results = [] if results is None else results
    for i, step in enumerate(steps):
        left = deadline - time.monotonic()
        timeout = min(left, max(MIN_STEP_SECONDS, left * step.weight / sum(s.weight for s in steps[i:])))
        if timeout < MIN_STEP_SECONDS:
            results.append({"name": step.name, "status": "skipped", "reason": "the stage's time is spent"})
            continue
        print(f"[gpu_check] {stage}: {step.name} (up to {timeout:.0f} s)", flush=True)
        results.append({"name": step.name, **run_step(step, timeout, log, env)})
    return {
        "status": stage_status(stage, [r["status"] for r in results]),
        "seconds": round(time.monotonic() - start, 1),
        "steps": results,
    }


def stage_status(stage: str, statuses: list[str]) -> str:
    """ok (every step; for train an out-of-memory row is a result too), skipped (none ran),
    timeout / failed (none succeeded), else partial."""
    done = {"ok", "oom"} if stage == "train" else {"ok"}
    if set(statuses) <= done:
        return "ok"
    if set(statuses) == {"skipped"}:
        return "skipped"
    if not set(statuses) & done:
        return "timeout" if "timeout" in statuses else "failed"
    return "partial"


# ----------------------------------------------------------------------------- reading what the steps wrote


def _read_json(path: pathlib.Path | None):
    try:
        return json.loads(path.read_text()) if path and path.exists() else None
    except json.JSONDecodeError:
        return None


def collect(stage: str, steps: list[Step], record: dict, out: pathlib.Path, probe: dict) -> dict:
    """The measurements of a finished stage, from the files its steps wrote."""
    if stage == "tune":
        table = _read_json(out / TABLE) or {"entries": []}
        kind = probe.get("device_kind")
        return {"table": TABLE, "entries": [e for e in table["entries"] if e["device"] == kind]}
    if stage == "bench":
        rows, bandwidth = [], None
        for step in steps:
            result = _read_json(step.out)
            if result:
                rows += result["rows"]
                bandwidth = result.get("peak_bandwidth_bytes_per_s")
        return {
            "peak_bandwidth_bytes_per_s": bandwidth,
            "roofline": "least HBM bytes / peak bandwidth / time",
            "rows": rows,
            "ratios": kernel_ratios(rows),
        }
    if stage == "tests":
        return junit_summary(steps[0].out)
    if stage == "train":
        rows, formula = [], None
        for step, done in zip(steps, record["steps"], strict=True):
            result = _read_json(step.out)
            if result:
                rows += result["rows"]
                formula = result.get("flop_formula", formula)
            else:  # a step that died (or never ran) is a row too
                attention, _, seq = step.name.split()
                rows.append({"attention": attention, "seq": int(seq), "status": done["status"]})
        return {
            "flop_formula": formula,
            "mfu": "model FLOPs per step / step seconds / the device's dense bf16 peak",
            "rows": rows,
            "ratios": throughput_ratios(rows),
        }
    if stage == "decode":
        rows = []
        for step, done in zip(steps, record["steps"], strict=True):
            result = _read_json(step.out)
            if result:
                rows += [{**r, "status": "ok"} for r in result["rows"]]
            else:
                attention, _, context = step.name.split()
                rows.append({"attention": attention, "context": int(context), "status": done["status"]})
        return {"rows": rows, "ratios": decode_ratios(rows)}
    return {}


def kernel_ratios(rows: list[dict]) -> list[dict]:
    """Per (seq, mode): pallas time, its roofline fraction, and how many times faster than the others."""
    ok = {(r["impl"], r["mode"], r["seq"]): r for r in rows if r.get("status") == "ok"}
    out = []
    for (impl, mode, seq), r in sorted(ok.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        if impl != "pallas":
            continue
        speedup = {
            other: ok[other, mode, seq]["median_s"] / r["median_s"]
            for other in ("xla", "softmax", "fla")
            if (other, mode, seq) in ok
        }
        out.append(
            {
                "seq": seq,
                "mode": mode,
                "pallas_ms": 1e3 * r["median_s"],
                "roofline_fraction": r.get("roofline_fraction"),
                "speedup_over": speedup,
            }
        )
    return out


def throughput_ratios(rows: list[dict]) -> list[dict]:
    rate = {(r["attention"], r["seq"]): r.get("tokens_per_second") for r in rows if r.get("status") == "ok"}
    return [
        {"seq": seq, "cosine_over_softmax": rate["cosine", seq] / rate["softmax", seq]}
        for seq in sorted({s for _, s in rate})
        if ("cosine", seq) in rate and ("softmax", seq) in rate
    ]


def decode_ratios(rows: list[dict]) -> dict:
    """Per attention: ms/token at the longest context / at the shortest."""
    out = {}
    for attention in ("cosine", "softmax"):
        mine = {r["context"]: r["ms_per_token"] for r in rows if r["attention"] == attention and "ms_per_token" in r}
        if len(mine) >= 2:
            out[attention] = {
                "longest_over_shortest": mine[max(mine)] / mine[min(mine)],
                "contexts": [min(mine), max(mine)],
            }
    return out


def junit_summary(path: pathlib.Path | None) -> dict:
    """Counts and every test's outcome and seconds (slowest first) from pytest's JUnit XML."""
    if not path or not path.exists():
        return {"counts": {}, "tests": []}
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
        tests.append(
            {
                "test": f"{case.get('classname')}::{case.get('name')}",
                "outcome": outcome,
                "seconds": float(case.get("time") or 0.0),
            }
        )
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return {"counts": counts, "tests": sorted(tests, key=lambda t: -t["seconds"])}


# ----------------------------------------------------------------------------- the whole pass


def device_slug(kind: str | None) -> str:
    return re.sub(r"[^a-z0-9]+", "-", (kind or "unknown device").lower()).strip("-")


def probe_device(env: dict, timeout: float) -> dict:
    env = {**env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")), None)
    if line is None:
        return {"status": "failed", "rc": done.returncode, "stderr_tail": done.stderr[-2000:]}
    return {"status": "ok", **json.loads(line[len("PROBE ") :])}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=540.0, help="seconds for the whole pass (default 9 minutes)")
    p.add_argument(
        "--out",
        type=pathlib.Path,
        default=None,
        help="output folder (default $OUT if set, else benchmarks/results/gpu-check-<date>)",
    )
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES, help="a subset, run in order")
    p.add_argument("--dry-run", action="store_true", help="every stage on the CPU at toy sizes (interpret mode)")
    args = p.parse_args(argv)
    if args.budget <= 0:
        p.error(f"--budget must be > 0 seconds; got {args.budget}")
    if args.out is None and os.environ.get("OUT"):
        args.out = pathlib.Path(os.environ["OUT"])
    elif args.out is None:  # a rehearsal leaves nothing in the checkout
        args.out = (
            pathlib.Path(tempfile.mkdtemp(prefix="gpu_check-dry-run-"))
            if args.dry_run
            else ROOT / "benchmarks" / "results" / f"gpu-check-{datetime.date.today().isoformat()}"
        )
    args.stages = [s for s in STAGES if s in args.stages]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    end = t0 + args.budget
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="gpu_check-"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "COTTENTION_KERNEL_TABLE": str(out / TABLE),
    }
    if args.dry_run:
        env["JAX_PLATFORMS"] = "cpu"
    else:  # as make gpu-test: the tests check results, not speed (GEMM autotuning dominated their compiles)
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_gpu_autotune_level=0".strip()
    if not (out / TABLE).exists():  # the shipped rows; the tuner merges this device's into them
        shutil.copyfile(SHIPPED_TABLE, out / TABLE)
    fla = importlib.util.find_spec("fla") is not None
    size = sizes(args.dry_run, fla)
    report = {
        "format": FORMAT,
        "version": VERSION,
        "dry_run": args.dry_run,
        "budget_s": args.budget,
        "command": " ".join(["python", "benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
        "provenance": "benchmarks/gpu_check.py"
        + (" --dry-run: toy sizes on the CPU, not a measurement" if args.dry_run else ""),
        "machine": machine_facts(*PACKAGES),
        "fla_importable": fla,
        "shares": SHARES,
        "device": None,
        "probe": None,
        "stages": {},
    }
    old_handlers = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    path = out / "unknown-device.json"
    running = None

    def write():
        report["elapsed_s"] = round(time.monotonic() - t0, 1)
        path.write_text(json.dumps(report, indent=1) + "\n")

    try:
        report["probe"] = probe = probe_device(env, min(PROBE_SECONDS, max(end - time.monotonic(), 1.0)))
        report["device"] = probe.get("device_kind") or "unknown device"
        path = out / f"{device_slug(probe.get('device_kind'))}.json"
        print(f"[gpu_check] device: {report['device']} ({probe['status']}); writing {path}", flush=True)
        if not args.dry_run and probe.get("platform") not in (None, "gpu", "cuda"):
            print(
                f"[gpu_check] JAX sees {probe.get('platform')}, not a GPU: use --dry-run to rehearse on the CPU",
                file=sys.stderr,
            )
            report["stages"] = {s: {"status": "skipped", "reason": "no GPU"} for s in args.stages}
            write()
            return 2
        write()
        start, total = time.monotonic(), sum(SHARES[s] for s in args.stages)
        cumulative = 0.0
        for i, stage in enumerate(args.stages, start=1):
            cumulative += SHARES[stage] / total
            deadline = min(end, start + (end - start) * cumulative)
            if end - time.monotonic() < MIN_STEP_SECONDS:
                report["stages"][stage] = {"status": "skipped", "reason": f"the budget of {args.budget:.0f} s is spent"}
                continue
            log = out / f"{STAGES.index(stage) + 1}-{stage}.log"
            steps, done = plan(stage, size, out, scratch), []
            running = (stage, steps, done, log)
            print(f"[gpu_check] stage {i}/{len(args.stages)} {stage}: until +{deadline - t0:.0f} s", flush=True)
            record = run_stage(stage, steps, deadline, log, env, done)
            running = None
            record.update(log=log.name, results=collect(stage, steps, record, out, probe))
            report["stages"][stage] = record
            print(f"[gpu_check] {stage}: {record['status']} in {record['seconds']:.0f} s", flush=True)
            write()
    except Stopped as why:
        if running:  # the steps that ended, and what they wrote
            stage, steps, done, log = running
            record = {"status": "stopped", "reason": f"stopped by {why}", "steps": done, "log": log.name}
            record["results"] = collect(stage, steps[: len(done)], record, out, probe)
            report["stages"][stage] = record
        for stage in args.stages:
            report["stages"].setdefault(stage, {"status": "skipped", "reason": f"stopped by {why}"})
        report["stopped"] = str(why)
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        write()
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"[gpu_check] wrote {path} ({report['elapsed_s']:.0f} s of {args.budget:.0f}); to publish it: copy it "
        f"to benchmarks/results/ (and {TABLE} over the shipped table), then run benchmarks/render_tables.py",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
