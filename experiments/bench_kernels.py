"""Time and memory of the causal linear-attention kernels against XLA, softmax and FLA (GPU).

    python experiments/bench_kernels.py                      # GPU: the full sweep
    python experiments/bench_kernels.py --seqs 16384 --dims 128 --impls pallas fla
    python experiments/bench_kernels.py --seqs 16384 --dims 128 --impls pallas \
        --pallas-configs default 64,128,128,8,2,2 64,64,64,4,3,1      # tune the block sizes
    python experiments/bench_kernels.py --smoke --out /tmp/x.json   # CPU: tiny shapes, checks the logic

Implementations, all causal, layout (B, T, H, D), one call each:
  pallas   pallas_kernels.cosine_attn.chunked.causal_linear_attention (the kernels), once per
           --pallas-configs entry: "default" or chunk,block_k,block_v,num_warps,num_stages,segments
           (segments "auto" = chosen by the wrapper)
  xla      pallas_kernels.cosine_attn.xla.chunked_linear_attention (chunk-parallel jnp)
  softmax  jax.nn.dot_product_attention(is_causal=True), cuDNN flash where available, else XLA
  naive    the quadratic form ((Q K~^T) * M) V, where its T x T scores fit in memory
  fla      flash-linear-attention's chunk_linear_attn (PyTorch/Triton), if `fla` imports
           (experiments/bench_fla_worker.py, a process without jax)
For every (impl, head dim, mode) a fresh process runs the sequence lengths in
increasing order, so the allocator's peak (`peak_bytes_in_use`) is that of the
row just measured (--smoke runs everything in one worker process). Modes:
"fwd" (out = f(q, k, v)) and "fwd+bwd" (the VJP in q, k, v from a random dO).
Timing: warm-up calls, then the median of many synchronised runs. Each worker
checks its first sequence length against a float32 reference (batch element
0). The measuring and the FLOP / byte models are in cottention_jax/kernel_bench.py
(reasoning: benchmarks/NOTES.md).

Writes benchmarks/results/<device>.json and a Markdown table beside it (for the
README); --smoke writes only to --out or a temporary directory.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))   # run from a checkout without installing

from cottention_jax import kernel_bench as kb  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+",
                   default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--impls", nargs="+", default=list(kb.IMPLS), choices=kb.IMPLS)
    p.add_argument("--pallas-configs", nargs="+", default=["default"], type=_check_config,
                   help='"default" or chunk,block_k,block_v,num_warps,num_stages,segments|auto')
    p.add_argument("--repeats", type=int, default=50, help="timed runs (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-seconds", type=float, default=20.0, help="time budget per measurement")
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes on any backend (Pallas in interpret mode); for tests")
    p.add_argument("--out", type=pathlib.Path, help="results JSON path")
    # internal: one worker process per (impl, dim, mode)
    p.add_argument("--worker", nargs=3, metavar=("IMPL", "DIM", "MODE"), help=argparse.SUPPRESS)
    p.add_argument("--worker-out", type=pathlib.Path, help=argparse.SUPPRESS)
    p.add_argument("--pallas-config", default="default", help=argparse.SUPPRESS)  # one, for a worker
    args = p.parse_args(argv)
    if args.smoke:
        args.seqs, args.dims, args.batch, args.heads = [100], [16], 1, 2
        args.repeats, args.warmup, args.max_seconds = 3, 1, 5.0
        args.impls = [i for i in args.impls if i != "fla"]
    return args


def _check_config(text: str) -> str:
    try:
        kb.block_sizes_from_text(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err
    return text


def _spawn(args, impl: str, d: int, mode: str, tmp: pathlib.Path, config: str = "default") -> list[dict]:
    """Run a worker process; impl and mode may be comma-separated lists (one process for all)."""
    out = tmp / f"{impl.replace(',', '_')}-{d}-{mode.replace('+', '').replace(',', '_')}-{config}.json"
    shared = ["--dtype", args.dtype, "--batch", str(args.batch), "--heads", str(args.heads),
              "--repeats", str(args.repeats), "--warmup", str(args.warmup),
              "--max-seconds", str(args.max_seconds), "--seqs", *map(str, args.seqs)]
    if impl == "fla":
        cmd = [sys.executable, str(ROOT / "experiments" / "bench_fla_worker.py"), "--head-dim", str(d),
               "--mode", mode, "--out", str(out), *shared]
    else:
        cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", impl, str(d), mode,
               "--worker-out", str(out), "--pallas-config", config, *shared]
    if args.smoke and impl != "fla":
        cmd.append("--smoke")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, env=env, cwd=ROOT)
    if done.returncode or not out.exists():
        return [{"impl": i, "mode": m, "head_dim": d, "seq": t, "status": f"worker exit {done.returncode}"}
                for i in impl.split(",") for m in mode.split(",") for t in args.seqs]
    return json.loads(out.read_text())


def _fla_available() -> bool:
    if importlib.util.find_spec("fla") is None or importlib.util.find_spec("torch") is None:
        return False
    probe = "import torch, fla.ops.linear_attn; assert torch.cuda.is_available()"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def main(argv=None):
    args = parse_args(argv)
    if args.worker:        # one JAX worker process: every (impl, mode) it names, for one head dim
        settings = kb.BenchSettings(tuple(args.seqs), args.batch, args.heads, args.dtype, args.warmup,
                                    args.repeats, args.max_seconds, args.smoke)
        impls, d, modes = args.worker[0].split(","), int(args.worker[1]), args.worker[2].split(",")
        rows = [row for impl in impls for mode in modes
                for row in kb.measure_jax(impl, d, mode, settings, args.pallas_config)]
        args.worker_out.write_text(json.dumps(rows))
        return
    import jax  # noqa: PLC0415  (the orchestrator only asks which device this is)

    from cottention_jax.benchmark import describe_device  # noqa: PLC0415

    info = describe_device()
    if not args.smoke and jax.default_backend() != "gpu":
        sys.exit(f"bench_kernels.py measures GPU kernels; JAX sees {jax.default_backend()}. "
                 "Use --smoke to check the script's logic on CPU.")
    impls = [i for i in args.impls if i != "fla" or _fla_available()]
    skipped = sorted(set(args.impls) - set(impls))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in args.dims:
            if args.smoke:       # one process per config: the allocator peak is not measured on CPU
                for config in args.pallas_configs:
                    names = impls if config == args.pallas_configs[0] else ["pallas"]
                    rows += _spawn(args, ",".join(names), d, ",".join(kb.MODES), pathlib.Path(tmp), config)
                continue
            for impl in impls:   # one process per row family: its peak memory is its own
                for config in (args.pallas_configs if impl == "pallas" else ["default"]):
                    for mode in kb.MODES:
                        rows += _spawn(args, impl, d, mode, pathlib.Path(tmp), config)
    bandwidth = kb.peak_bandwidth(info["device"])
    result = {"smoke": args.smoke, "device": info["device"], "platform": info["platform"],
              "jax_version": jax.__version__, "python": info["python"],
              "date": datetime.date.today().isoformat(), "dtype": args.dtype, "batch": args.batch,
              "heads": args.heads, "peak_bandwidth_bytes_per_s": bandwidth,
              "not_run": {i: "fla (flash-linear-attention) does not import here" for i in skipped},
              "rows": [kb.with_throughput(r, bandwidth) for r in rows]}
    table = kb.markdown_table(result)
    print("\n" + table)
    if args.out is None:
        out = (pathlib.Path(tempfile.mkdtemp()) / "smoke.json" if args.smoke else
               ROOT / "benchmarks" / "results" / f"{re.sub(r'[^A-Za-z0-9]+', '_', info['device']).strip('_')}.json")
    else:
        out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
