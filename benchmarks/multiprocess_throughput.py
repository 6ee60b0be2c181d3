"""Training tokens/s of one run split over processes: 1 process x 8 devices, 2 x 4 and 4 x 2 on this machine.

    python benchmarks/multiprocess_throughput.py              # gpt-small, sharding=data, 60 steps per layout
    python benchmarks/multiprocess_throughput.py --smoke      # gpt-tiny, 1 x 2 and 2 x 1, a few steps (the test)

Each layout is a real training run of experiments/train_gpt.py (in a fresh temp workdir; the data is
prepared once, in a temp data_dir, by the first run): one process with XLA_FLAGS'
--xla_force_host_platform_device_count, or N processes through `python -m cottention_jax.launch`
(jax.distributed, gloo collectives over loopback). No evaluation but the one before step 1 and the one
after the last step, no checkpoint but the last, no sampling. The figure is the run's own: the
`tokens_per_second` of each train record of metrics.jsonl (TrainLogHook: tokens of the window / its
wall time); the first window (set-up, the step-0 evaluation, compilation) is dropped and the median of
the others reported, with its ratio to the first layout.

Writes --out (JSON: machine, versions, date, commit, load averages, the rows) and prints a markdown
table. On a CPU this is a functional figure: all processes share the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: import from the root
    sys.path[0] = str(ROOT)

from benchmarks.machine import machine_facts  # noqa: E402  (after the path set-up above)

NOTE = (
    "A functional figure, not a speed claim: measured on a {cores}-core CPU machine shared with other work, "
    "where all N processes (and their XLA CPU devices) share the same {cores} cores and the gloo "
    "collectives between processes go over loopback TCP. It shows that multi-process training runs and "
    "what it costs here, not how it scales on separate hosts or accelerators."
)


def _env(devices: int | None) -> dict:
    """This environment without multi-process or device-count settings; CPU, unbuffered output."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COTTENTION_COORDINATOR", "COTTENTION_NUM", "COTTENTION_PROCESS", "XLA_FLAGS"))
    }
    env.update(PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def run_layout(nproc: int, per_process: int, args, data_dir: Path, tmp: Path) -> dict:
    workdir = tmp / f"run-{nproc}x{per_process}"
    sets = [
        f"data.data_dir={data_dir}",
        f"steps={args.steps}",
        f"log_every={args.log_every}",
        "eval_every=1000000",
        "checkpoint_every=1000000",
        "sample_tokens=0",
        "sharding=data",
        *args.overrides,
    ]
    train = [
        sys.executable,
        str(ROOT / "experiments" / "train_gpt.py"),
        "--preset",
        args.preset,
        "--no-progress",
        "--workdir",
        str(workdir),
        *sum((["--set", s] for s in sets), []),
    ]
    if nproc == 1:
        cmd, env = train, _env(per_process)
    else:
        cmd = [
            sys.executable,
            "-m",
            "cottention_jax.launch",
            "--nproc",
            str(nproc),
            "--devices-per-process",
            str(per_process),
            "--",
            *train,
        ]
        env = _env(None)
    load_before, start = os.getloadavg(), time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(
            f"{nproc} x {per_process} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_records = sorted((r for r in records if r.get("split") == "train"), key=lambda r: r["step"])
    rates = [r["tokens_per_second"] for r in train_records[1:]]  # the first window holds compilation
    if not rates:
        sys.exit(f"{nproc} x {per_process}: no train window after the first in {workdir / 'metrics.jsonl'}")
    summary = json.loads((workdir / "summary.json").read_text()) if (workdir / "summary.json").is_file() else {}
    config = json.loads((workdir / "config.json").read_text())
    tokens_per_step = config["data"]["batch_size"] * config["data"]["seq_len"] * config["optim"]["accumulate_steps"]
    median = statistics.median(rates)
    return {
        "layout": f"{nproc}x{per_process}",
        "processes": nproc,
        "devices_per_process": per_process,
        "devices": nproc * per_process,
        "steps": args.steps,
        "log_every": args.log_every,
        "tokens_per_step": tokens_per_step,
        "parameters": summary.get("parameters"),
        "first_window_tokens_per_s": train_records[0]["tokens_per_second"],
        "windows_used": len(rates),
        "windows_tokens_per_s": rates,
        "median_tokens_per_s": median,
        "median_step_s": tokens_per_step / median,
        "final_train_loss": train_records[-1]["loss"],
        "wall_s": wall,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="gpt-tiny, 1x2 and 2x1, 8 steps (a functional check)")
    p.add_argument("--preset", default=None, help="default gpt-small (smoke: gpt-tiny)")
    p.add_argument(
        "--layouts",
        nargs="+",
        default=None,
        metavar="NxK",
        help="processes x devices per process; default 1x8 2x4 4x2 (smoke: 1x2 2x1)",
    )
    p.add_argument("--steps", type=int, default=None, help="default 60 (smoke: 8)")
    p.add_argument("--log-every", type=int, default=None, help="steps per log window; default 5 (smoke: 2)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="more training settings, for every layout",
    )
    p.add_argument("--timeout", type=float, default=1200, help="seconds per run")
    p.add_argument("--tmp", type=Path, default=None, help="where the temp workdirs and data go")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "multiprocess_cpu.json")
    args = p.parse_args(argv)
    args.preset = args.preset or ("gpt-tiny" if args.smoke else "gpt-small")
    args.layouts = args.layouts or (["1x2", "2x1"] if args.smoke else ["1x8", "2x4", "4x2"])
    args.steps = args.steps or (8 if args.smoke else 60)
    args.log_every = args.log_every or (2 if args.smoke else 5)
    if args.steps % args.log_every or args.steps < 2 * args.log_every:
        p.error("--steps must be a multiple of --log-every, at least two windows (the first is dropped)")
    layouts = [tuple(int(x) for x in layout.lower().split("x")) for layout in args.layouts]

    machine = machine_facts("jax", "jaxlib", "flax", "numpy")
    rows = []
    with tempfile.TemporaryDirectory(prefix="mp-throughput-", dir=args.tmp) as tmp:
        for nproc, per_process in layouts:
            print(f"running {nproc} x {per_process} ...", flush=True)
            rows.append(run_layout(nproc, per_process, args, Path(tmp) / "data", Path(tmp)))
    base = rows[0]["median_tokens_per_s"]
    for row in rows:
        row["ratio_to_baseline"] = row["median_tokens_per_s"] / base
    result = {
        "benchmark": "multiprocess_throughput",
        "smoke": args.smoke,
        "machine": machine,
        "note": NOTE.format(cores=os.cpu_count()),
        "settings": {
            "preset": args.preset,
            "sharding": "data",
            "steps": args.steps,
            "log_every": args.log_every,
            "overrides": args.overrides,
            "baseline": args.layouts[0],
            "collectives": "gloo (jax.distributed, 127.0.0.1)",
            "measure": "median over the train windows of metrics.jsonl after the first "
            "(TrainLogHook's tokens_per_second: a window's tokens / its wall time)",
            "wall_s": "the whole run: process start, data preparation (first layout only), "
            "compilation, the two evaluations, the last checkpoint",
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")

    print(
        f"\n{args.preset}, sharding=data, {args.steps} steps, median of {rows[0]['windows_used']} windows of "
        f"{args.log_every} steps after the first; {machine['cpu']}, {machine['cpu_count']} cores, jax "
        f"{machine['jax']}\n"
    )
    print(
        f"| processes x devices | tokens/s (median) | min-max of windows | ratio to {args.layouts[0]} | "
        "step s | load avg (1 min) before | wall s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['processes']} x {r['devices_per_process']} | {r['median_tokens_per_s']:,.0f} | "
            f"{min(r['windows_tokens_per_s']):,.0f}-{max(r['windows_tokens_per_s']):,.0f} | "
            f"{r['ratio_to_baseline']:.2f} | {r['median_step_s']:.3f} | {r['load_before'][0]:.2f} | "
            f"{r['wall_s']:.0f} |"
        )
    print(f"\n{result['note']}\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
