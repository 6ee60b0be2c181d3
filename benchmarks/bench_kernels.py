"""Time and memory of causal linear attention (Pallas kernels) against XLA, cuDNN softmax and FLA (GPU),
or against XLA on a TPU.

    python benchmarks/bench_kernels.py                       # the target comparison (< 3 min on an H100)
    python benchmarks/bench_kernels.py --seqs 4096 16384 --dims 64 128 --impls pallas fla
    python benchmarks/bench_kernels.py --smoke --out /tmp/x.json   # CPU: tiny shapes, checks the logic
    python benchmarks/bench_kernels.py --platform tpu        # on a TPU: the Mosaic kernels vs the xla form
    python benchmarks/bench_kernels.py --smoke --platform tpu      # CPU: the TPU path in TPU interpret mode

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

On a TPU (`--platform tpu`, the default on a TPU backend): pallas is
pallas_kernels.cosine_attn.pallas_tpu.causal_linear_attention_pallas_tpu with the launch
table's TPU row for this device (TpuBlockSizes.get_default), timed against xla (and naive when
asked) with the same inputs, timing and checks; softmax (cuDNN) and fla are GPU kernels and are
skipped with a printed reason. The script then prints, per (D, mode, T), which of pallas and
xla is faster and by how much, and whether pallas won every forward+backward row (what the
README asks before the TPU default may change from xla); the JSON gets them as "tpu_vs_xla".

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
PROG = "bench_kernels.py"
# Implementations that are GPU kernels: skipped on a TPU, with the reason printed.
GPU_ONLY = {
    "softmax": "its row is cuDNN's flash attention, a GPU kernel",
    "fla": "flash-linear-attention is Triton / CUDA (PyTorch)",
}
# Peak HBM bandwidth (bytes/s) by TPU device kind, per chip (Google Cloud TPU documentation); first match wins.
TPU_PEAK_BANDWIDTH = (("TPU v4", 1.2e12), ("TPU v5 lite", 819e9), ("TPU v5", 2.765e12), ("TPU v6 lite", 1.64e12))


def parse_args(argv=None):
    from benchmarks import kernels as kb  # noqa: PLC0415
    from cottention_jax.cli_errors import OneLineParser  # noqa: PLC0415

    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument(
        "--platform",
        choices=["gpu", "tpu"],
        default=None,
        help="whose kernels to measure: gpu (Triton) or tpu (Mosaic); default JAX's backend. On a CPU only "
        "with --smoke (interpret mode; default gpu)",
    )
    p.add_argument("--out", type=pathlib.Path, help="results JSON path")
    args = p.parse_args(argv)
    for name in ("batch", "heads", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1; got {getattr(args, name)}")
    if min(args.seqs) < 1 or min(args.dims) < 1:
        p.error(f"--seqs and --dims must be >= 1; got {args.seqs} and {args.dims}")
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


def _tpu_pallas(sizes, interpret: bool):
    """f(q, k, v, key_scale) -> out through the TPU kernels with `sizes`."""
    import jax.numpy as jnp  # noqa: PLC0415  (JAX starts after FLA's process: see main)

    from pallas_kernels.cosine_attn import pallas_tpu  # noqa: PLC0415

    def call(q, k, v, w):
        s0 = jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), jnp.float32)
        return pallas_tpu.causal_linear_attention_pallas_tpu(q, k, v, w, s0, interpret=interpret, block_sizes=sizes)[0]

    return call


def measure_tpu(impls, d: int, settings, log=print) -> list[dict]:
    """Rows for every (impl, mode, seq) at head dim d with pallas = the TPU kernels at this device's
    launch: benchmarks/kernels.py's measure_jax (rows, inputs, timing, checks) with that function."""
    import jax.numpy as jnp  # noqa: PLC0415  (JAX starts after FLA's process: see main)

    from benchmarks import kernels as kb  # noqa: PLC0415
    from pallas_kernels.cosine_attn import pallas_tpu  # noqa: PLC0415

    sizes = pallas_tpu.TpuBlockSizes.get_default(jnp.dtype(settings.dtype), d, d)
    padded = pallas_tpu.tpu_padded_head_dim(d)
    launch = f"chunk {sizes.chunk}, blocks {min(sizes.block_k, padded)}/{min(sizes.block_v, padded)}"
    variant = {"pallas": f"tpu{' interpret' if settings.smoke else ''}: {launch}"}
    fns = {"pallas": _tpu_pallas(sizes, settings.smoke)}
    return kb.measure_jax(impls, d, settings, log=log, fns=fns, variants=variant)


def tpu_vs_xla(rows: list[dict]) -> list[dict]:
    """Per (D, mode, T) where both ran: pallas's and xla's ms, the faster, and the speed-up (the slower's
    time over the faster's; > 1)."""
    ok = {(r["impl"], r["head_dim"], r["mode"], r["seq"]): r for r in rows if r.get("status") == "ok"}
    out = []
    for (impl, d, mode, t), row in sorted(ok.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3])):
        other = ok.get(("xla", d, mode, t))
        if impl != "pallas" or other is None:
            continue
        pallas_s, xla_s = row["median_s"], other["median_s"]
        out.append(
            {
                "head_dim": d,
                "mode": mode,
                "seq": t,
                "pallas_ms": 1e3 * pallas_s,
                "xla_ms": 1e3 * xla_s,
                "faster": "pallas" if pallas_s < xla_s else "xla",
                "speedup": max(pallas_s, xla_s) / min(pallas_s, xla_s),
            }
        )
    return out


def _report_tpu(comparison: list[dict], smoke: bool) -> dict:
    """Print the pallas-vs-xla lines and the verdict; return the verdict for the JSON."""
    print("\nTPU kernels (pallas) vs the xla form" + (" (SMOKE: interpret mode, not a measurement)" if smoke else ""))
    for c in comparison:
        print(
            f"  D={c['head_dim']} T={c['seq']} {c['mode']:8s}: pallas {c['pallas_ms']:.3f} ms, "
            f"xla {c['xla_ms']:.3f} ms -> {c['faster']} is {c['speedup']:.2f}x faster"
        )
    fwd_bwd = [c for c in comparison if c["mode"] == "fwd+bwd"]
    wins = bool(fwd_bwd) and all(c["faster"] == "pallas" for c in fwd_bwd)
    if not fwd_bwd:
        print("  no fwd+bwd row ran for both pallas and xla: nothing to compare")
    else:
        print(
            f"  forward+backward: pallas faster than xla at {sum(c['faster'] == 'pallas' for c in fwd_bwd)} of "
            f"{len(fwd_bwd)} shapes" + ("" if smoke else f" ({'every' if wins else 'not every'} one)")
        )
    return {"pallas_faster_every_fwd_bwd": wins}


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        skip_fla = args.platform == "tpu"  # known before JAX starts: FLA's process is not run
        rows = run_fla(args, pathlib.Path(tmp)) if "fla" in args.impls and not skip_fla else []
    import jax  # noqa: PLC0415  (after the FLA process: JAX then takes the GPU's memory)

    from benchmarks import kernels as kb  # noqa: PLC0415
    from benchmarks.measure import describe_device  # noqa: PLC0415

    info = describe_device()
    from pallas_kernels.cosine_attn.tune import kernel_platform  # noqa: PLC0415

    try:
        platform = kernel_platform(args.platform, args.smoke, jax.default_backend())
    except ValueError as err:
        sys.exit(f"{PROG}: {err}")
    settings = kb.BenchSettings(
        tuple(args.seqs), args.batch, args.heads, args.dtype, args.warmup, args.repeats, args.max_seconds, args.smoke
    )
    log = lambda line: print(f"[{info['device']}] {line}", flush=True)  # noqa: E731
    extra: dict = {}
    if platform == "tpu":
        rows = []  # FLA's rows, if its process ran (no --platform): a GPU comparison
        skipped = {i: why for i, why in GPU_ONLY.items() if i in args.impls}
        for impl, why in skipped.items():
            print(f"skipped {impl} on TPU: {why}")
        impls = [i for i in args.impls if i not in GPU_ONLY]
        if "pallas" not in impls or "xla" not in impls:
            sys.exit(f"{PROG}: on TPU --impls must include pallas and xla (the comparison); got {' '.join(args.impls)}")
        for d in args.dims:
            rows += measure_tpu(impls, d, settings, log=log)
        comparison = tpu_vs_xla(rows)
        extra = {"kernels": "tpu", "skipped": skipped, "tpu_vs_xla": comparison, **_report_tpu(comparison, args.smoke)}
        bandwidth = None if args.smoke else next((b for n, b in TPU_PEAK_BANDWIDTH if n in info["device"]), None)
    else:
        jax_impls = [i for i in args.impls if i != "fla"]
        for d in args.dims:
            rows += kb.measure_jax(jax_impls, d, settings, log=log)
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
        **extra,
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
