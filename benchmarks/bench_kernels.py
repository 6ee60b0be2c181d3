"""Time and memory of causal linear attention (Pallas kernels) against XLA, cuDNN softmax and FLA (GPU).

    python benchmarks/bench_kernels.py                       # the target comparison (< 3 min on an H100)
    python benchmarks/bench_kernels.py --seqs 4096 16384 --dims 64 128 --impls pallas fla
    python benchmarks/bench_kernels.py --smoke --out /tmp/x.json   # CPU: tiny shapes, checks the logic

Default: B=8, H=16, D=128, bf16, T = 4K, 16K, 64K; "fwd" (out = f(q, k, v)) and
"fwd+bwd" (the VJP in q, k, v from a random dO), causal. Implementations:
  pallas   pallas_kernels.cosine_attn.pallas.causal_linear_attention_pallas, default (tuned) block sizes
  xla      pallas_kernels.cosine_attn.xla.causal_linear_attention_xla (chunk-parallel jnp)
  softmax  jax.nn.dot_product_attention(is_causal=True, implementation="cudnn") (XLA off-GPU)
  naive    the quadratic form ((Q K~^T) * M) V, where its T x T scores fit (not run by default)
  fla      flash-linear-attention's chunk_linear_attn (PyTorch), where it imports

One process per framework: FLA runs first in a process of its own that never
imports jax (so JAX's allocator does not hold the GPU meanwhile) and reports
for itself whether it is installed; then every JAX row runs in this process.
Each (implementation, mode, length) is compiled once; correctness is checked
once per (implementation, mode) on a small slice against a float32 reference.
Timing: warm-up calls, then the median of synchronised runs (bounded by
--max-seconds per row). Memory: XLA's buffer assignment of the call for JAX
rows, the allocator's peak for FLA. The measuring and the FLOP / byte models
are in benchmarks/kernels.py (reasoning: benchmarks/NOTES.md).

Writes benchmarks/results/<device>.json and a Markdown table beside it;
--smoke writes only to --out or a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    from benchmarks import kernels as kb  # noqa: PLC0415

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+", default=[4096, 16384, 65536])
    p.add_argument("--dims", type=int, nargs="+", default=[128])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--impls", nargs="+", default=["pallas", "xla", "softmax", "fla"], choices=kb.IMPLS)
    p.add_argument("--repeats", type=int, default=20, help="timed runs at most (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--max-seconds", type=float, default=1.0, help="timed seconds per row (at least 3 runs)")
    p.add_argument(
        "--smoke", action="store_true", help="tiny shapes on any backend (Pallas in interpret mode); for tests"
    )
    p.add_argument("--out", type=pathlib.Path, help="results JSON path")
    args = p.parse_args(argv)
    if args.smoke:
        args.seqs, args.dims, args.batch, args.heads = [100], [16], 1, 2
        args.repeats, args.warmup, args.max_seconds = 3, 1, 1.0
        args.impls = [i for i in args.impls if i != "fla"] + (["naive"] if "naive" not in args.impls else [])
    return args


def run_fla(args, tmp: pathlib.Path) -> list[dict]:
    """flash-linear-attention rows from benchmarks/bench_fla_worker.py (a process without jax)."""
    out = tmp / "fla.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_fla_worker.py"),
        "--out",
        str(out),
        "--dims",
        *map(str, args.dims),
        "--seqs",
        *map(str, args.seqs),
        "--dtype",
        args.dtype,
        "--batch",
        str(args.batch),
        "--heads",
        str(args.heads),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--max-seconds",
        str(args.max_seconds),
    ]
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode or not out.exists():
        return [
            {"impl": "fla", "mode": m, "head_dim": d, "seq": t, "status": f"worker exit {done.returncode}"}
            for d in args.dims
            for m in ("fwd", "fwd+bwd")
            for t in args.seqs
        ]
    return json.loads(out.read_text())


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_fla(args, pathlib.Path(tmp)) if "fla" in args.impls else []
    import jax  # noqa: PLC0415  (after the FLA process: JAX then takes the GPU's memory)

    from benchmarks import kernels as kb  # noqa: PLC0415
    from benchmarks.measure import describe_device  # noqa: PLC0415

    info = describe_device()
    if not args.smoke and jax.default_backend() != "gpu":
        sys.exit(
            f"bench_kernels.py measures GPU kernels; JAX sees {jax.default_backend()}. "
            "Use --smoke to check the script's logic on CPU."
        )
    settings = kb.BenchSettings(
        tuple(args.seqs), args.batch, args.heads, args.dtype, args.warmup, args.repeats, args.max_seconds, args.smoke
    )
    jax_impls = [i for i in args.impls if i != "fla"]
    for d in args.dims:
        rows += kb.measure_jax(jax_impls, d, settings, log=lambda line: print(f"[{info['device']}] {line}", flush=True))
    bandwidth = kb.peak_bandwidth(info["device"])
    result = {
        "smoke": args.smoke,
        "device": info["device"],
        "platform": info["platform"],
        "jax_version": jax.__version__,
        "python": info["python"],
        "date": datetime.date.today().isoformat(),
        "dtype": args.dtype,
        "batch": args.batch,
        "heads": args.heads,
        "peak_bandwidth_bytes_per_s": bandwidth,
        "rows": [kb.with_throughput(r, bandwidth) for r in rows],
    }
    table = kb.markdown_table(result)
    print("\n" + table)
    if args.out is None:
        name = re.sub(r"[^A-Za-z0-9]+", "_", info["device"]).strip("_")
        out = (
            pathlib.Path(tempfile.mkdtemp()) / "smoke.json"
            if args.smoke
            else ROOT / "benchmarks" / "results" / f"{name}.json"
        )
    else:
        out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if str(ROOT) not in sys.path:  # run as `python benchmarks/bench_kernels.py`, from a checkout
        sys.path.insert(0, str(ROOT))
    main()
