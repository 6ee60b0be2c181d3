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
  xla      pallas_kernels.cosine_attn.xla.chunked_linear_attention (jnp + lax.scan)
  softmax  jax.nn.dot_product_attention(is_causal=True), cuDNN flash where available, else XLA
  naive    the quadratic form ((Q K~^T) * M) V, where its T x T scores fit in memory
  fla      flash-linear-attention's chunk_linear_attn (PyTorch/Triton), if `fla` imports
For every (impl, head dim, mode) a fresh process runs the sequence lengths in
increasing order, so the allocator's peak (`peak_bytes_in_use`) is that of the
row just measured (--smoke runs everything in one worker process). Modes:
"fwd" (out = f(q, k, v)) and "fwd+bwd" (the VJP in q, k, v from a random dO).
Timing: warm-up calls, then the median of many synchronised runs. Each worker
checks its first sequence length against a float32 reference (batch element
0). FLOP and byte models: benchmarks/NOTES.md.

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
IMPLS = ("pallas", "xla", "softmax", "naive", "fla")
MODES = ("fwd", "fwd+bwd")
CHUNK = 64  # the chunk of the chunked FLOP model (pallas, xla and fla all use 64)
# Peak HBM bandwidth (bytes/s) by device kind, from the vendors' data sheets; first match wins.
PEAK_BANDWIDTH = (("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12), ("H200", 4.8e12),
                  ("GH200", 4.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12),
                  ("A100", 1.555e12), ("L40S", 0.864e12), ("L4", 0.3e12), ("B200", 8.0e12))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seqs", type=int, nargs="+",
                   default=[1024, 2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--impls", nargs="+", default=list(IMPLS), choices=IMPLS)
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
    if text != "default":
        fields = text.split(",")
        if len(fields) != 6 or not all(f.isdigit() for f in fields[:5]) or not (
                fields[5] == "auto" or fields[5].isdigit()):
            raise argparse.ArgumentTypeError(
                f"a pallas config is 'default' or chunk,block_k,block_v,num_warps,num_stages,"
                f"segments|auto; got {text!r}")
    return text


def _block_sizes(text: str):
    """None (the wrapper's defaults) or a chunked.BlockSizes from a --pallas-configs entry."""
    if text == "default":
        return None
    from pallas_kernels.cosine_attn import chunked  # noqa: PLC0415

    *sizes, segments = text.split(",")
    chunk, block_k, block_v, num_warps, num_stages = map(int, sizes)
    return chunked.BlockSizes(chunk=chunk, block_k=block_k, block_v=block_v, num_warps=num_warps,
                              num_stages=num_stages, segments=None if segments == "auto" else int(segments))


# ----------------------------------------------------------------------------- models of work

def flops(impl: str, mode: str, b: int, t: int, h: int, d: int) -> float:
    """Useful FLOPs of one call (benchmarks/NOTES.md): chunked, quadratic or causal flash."""
    if impl in ("pallas", "xla", "fla"):          # per position: C x C block + two d x d products
        fwd = 2.0 * b * h * t * (CHUNK * 2 * d + 2 * d * d)
        return fwd * (3.5 if mode == "fwd+bwd" else 1.0)   # backward: 2.5x the forward
    if impl == "naive":                           # full T x T scores, masked
        fwd = 2.0 * b * h * t * t * 2 * d
        return fwd * (3.0 if mode == "fwd+bwd" else 1.0)
    fwd = 2.0 * b * h * t * t * 2 * d / 2         # softmax: causal flash skips half
    return fwd * (3.5 if mode == "fwd+bwd" else 1.0)


def min_bytes(impl: str, mode: str, b: int, t: int, h: int, d: int, itemsize: int) -> float:
    """Least HBM traffic of one call: read the inputs, write the outputs (once each)."""
    tensor = b * t * h * d * itemsize
    scale = b * t * h * 4 if impl in ("pallas", "xla", "naive") else 0     # key_scale, float32
    fwd = 4 * tensor + scale                                                # q, k, v in; o out
    if mode == "fwd":
        return fwd
    return fwd + 4 * tensor + scale + 3 * tensor + scale                   # q, k, v, dO in; dq, dk, dv out


def peak_bandwidth(device_kind: str) -> float | None:
    for name, bandwidth in PEAK_BANDWIDTH:
        if name in device_kind:
            return bandwidth
    return None


# ----------------------------------------------------------------------------- the JAX worker

def _jax_fn(impl: str, smoke: bool, pallas_config: str = "default"):
    """f(q, k, v, key_scale) -> out for one implementation (imports jax lazily)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from pallas_kernels.cosine_attn import chunked, xla  # noqa: PLC0415

    def state0(q, v):
        return jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), jnp.float32)

    if impl == "pallas":
        sizes = _block_sizes(pallas_config)
        return lambda q, k, v, w: chunked.causal_linear_attention(
            q, k, v, w, state0(q, v), interpret=smoke, block_sizes=sizes)[0]
    if impl == "xla":
        return lambda q, k, v, w: xla.chunked_linear_attention(q, k, v, w, state0(q, v))[0]
    if impl == "naive":
        def naive(q, k, v, w):
            t = q.shape[1]
            k_scaled = (k.astype(jnp.float32) * w[..., None]).astype(k.dtype)
            scores = jnp.einsum("bthd,bshd->bhts", q, k_scaled, preferred_element_type=jnp.float32)
            scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, 0.0).astype(q.dtype)
            return jnp.einsum("bhts,bshe->bthe", scores, v)
        return naive

    def softmax(q, k, v, w, implementation):
        del w
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
    return softmax


def _reference_fn(impl: str):
    """Float32 reference of the same function (linear attention or softmax attention)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from pallas_kernels.cosine_attn import reference  # noqa: PLC0415

    if impl != "softmax":
        def linear(q, k, v, w):
            s0 = jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), jnp.float32)
            return reference.causal_linear_attention_reference(q, k, v, w, s0)[0]
        return linear

    def softmax(q, k, v, w):
        del w
        q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
        t = q.shape[1]
        logits = jnp.einsum("bthd,bshd->bhts", q, k, precision="highest") / jnp.sqrt(q.shape[-1])
        logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
        return jnp.einsum("bhts,bshe->bthe", jax.nn.softmax(logits, -1), v, precision="highest")
    return softmax


def _inputs(b, t, h, d, dtype, seed):
    """[q, k, v, key_scale, dO]: q^, k^ unit rows (as the op feeds the kernels), v, dO ~ N(0, 1),
    key_scale = n^-1/2 (B, T, H) float32."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q, k, v, do = (jax.random.normal(key, (b, t, h, d), jnp.float32) for key in keys)
    q, k = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (q, k))
    w = jnp.broadcast_to(jnp.arange(1, t + 1, dtype=jnp.float32)[None, :, None] ** -0.5, (b, t, h))
    q, k, v, do = (x.astype(dtype) for x in (q, k, v, do))
    return [q, k, v, w, do]


def _build(impl, mode, smoke, softmax_impl, pallas_config):
    """The jitted call that is timed: args (q, k, v, w, dO)."""
    import functools  # noqa: PLC0415

    import jax  # noqa: PLC0415

    fn = _jax_fn(impl, smoke, pallas_config)
    if impl == "softmax":
        fn = functools.partial(fn, implementation=softmax_impl)
    if mode == "fwd":
        return jax.jit(lambda q, k, v, w, do: fn(q, k, v, w)), fn
    def fwd_bwd(q, k, v, w, do):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, w), q, k, v)
        return vjp(do)
    return jax.jit(fwd_bwd), fn


def _check(impl, mode, fn, args):
    """Max relative error (Frobenius) of out or (dq, dk, dv) vs the float32 reference, batch 0."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    q, k, v, w, do = (x[:1] for x in args)
    ref = _reference_fn(impl)
    def rel(a, e):
        a, e = jnp.asarray(a, jnp.float32), jnp.asarray(e, jnp.float32)
        return float(jnp.linalg.norm(a - e) / jnp.maximum(jnp.linalg.norm(e), 1e-30))
    if mode == "fwd":
        return rel(fn(q, k, v, w), ref(q, k, v, w))
    got = jax.vjp(lambda q, k, v: fn(q, k, v, w), q, k, v)[1](do)
    want = jax.vjp(lambda q, k, v: ref(q, k, v, w), q, k, v)[1](do.astype(jnp.float32))
    return max(rel(a, e) for a, e in zip(got, want))


def _softmax_implementation(smoke, d, dtype):
    """"cudnn" where it compiles here for this head dim and dtype, else None (XLA)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    if smoke or jax.default_backend() != "gpu":
        return None
    x = jnp.zeros((1, 128, 1, d), dtype)
    try:
        jax.jit(lambda x: jax.nn.dot_product_attention(x, x, x, is_causal=True,
                                                       implementation="cudnn")).lower(x).compile()
        return "cudnn"
    except Exception:  # noqa: BLE001  (no cuDNN flash for this build / device)
        return None


def run_worker(args) -> list[dict]:
    """Every (impl, mode) named by --worker, for one head dim, over the sequence lengths."""
    impls, d, modes = args.worker[0].split(","), int(args.worker[1]), args.worker[2].split(",")
    return [row for impl in impls for mode in modes for row in _measure(args, impl, d, mode)]


def _measure(args, impl: str, d: int, mode: str) -> list[dict]:
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from cottention_jax.benchmark import compiled_memory_bytes, describe_device, device_peak_bytes, median_time  # noqa: PLC0415

    dtype = jnp.dtype(args.dtype)
    device = describe_device()["device"]
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    limit = (stats or {}).get("bytes_limit")
    softmax_impl = _softmax_implementation(args.smoke, d, dtype) if impl == "softmax" else None
    pallas_variant = ("interpret " if args.smoke else "") + args.pallas_config
    variant = {"softmax": softmax_impl or "xla", "pallas": pallas_variant}.get(impl, "")
    step, fn = _build(impl, mode, args.smoke, softmax_impl, args.pallas_config)
    rows, failed = [], None
    for i, t in enumerate(sorted(args.seqs)):
        row = {"impl": impl, "variant": variant, "mode": mode, "batch": args.batch, "seq": t,
               "heads": args.heads, "head_dim": d, "dtype": dtype.name,
               "flops": flops(impl, mode, args.batch, t, args.heads, d),
               "bytes": min_bytes(impl, mode, args.batch, t, args.heads, d, dtype.itemsize)}
        quadratic = impl == "naive" or (impl == "softmax" and softmax_impl is None)
        if failed:
            rows.append({**row, "status": f"skipped after {failed}"})
            continue
        if quadratic and limit and 4.0 * args.batch * args.heads * t * t * 4 > 0.6 * limit:
            rows.append({**row, "status": "skipped: T x T scores do not fit"})
            continue
        try:
            inputs = _inputs(args.batch, t, args.heads, d, dtype, seed=t)
            row["compiled_bytes"] = compiled_memory_bytes(step, *inputs)
            row["max_rel_error"] = _check(impl, mode, fn, inputs) if i == 0 else None
            row.update(median_time(step, *inputs, warmup=args.warmup, repeats=args.repeats,
                                   max_seconds=args.max_seconds))
            row["peak_bytes"] = device_peak_bytes()
            row["status"] = "ok"
            del inputs
        except Exception as err:  # noqa: BLE001  (an out-of-memory or lowering failure is a result)
            failed = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            row["status"] = f"error: {failed}"
        rows.append(row)
        print(f"[{device}] {impl:8s} {mode:8s} d={d} T={t}: {row['status']}", flush=True)
    return rows


# ----------------------------------------------------------------------------- the FLA worker (PyTorch)

def run_fla_worker(args) -> list[dict]:
    """flash-linear-attention's chunk_linear_attn on the same shapes; never imports jax."""
    import inspect  # noqa: PLC0415
    import statistics  # noqa: PLC0415

    import torch  # noqa: PLC0415
    from fla.ops.linear_attn import chunk_linear_attn  # noqa: PLC0415

    d, mode = int(args.worker[1]), args.worker[2]
    dtype = getattr(torch, args.dtype)
    options = {"scale": 1.0, "normalize": False}
    if "head_first" in inspect.signature(chunk_linear_attn).parameters:
        options["head_first"] = False          # (B, T, H, D), as the JAX rows
    rows = []
    for t in sorted(args.seqs):
        row = {"impl": "fla", "variant": "chunk_linear_attn", "mode": mode, "batch": args.batch,
               "seq": t, "heads": args.heads, "head_dim": d, "dtype": args.dtype,
               "flops": flops("fla", mode, args.batch, t, args.heads, d),
               "bytes": min_bytes("fla", mode, args.batch, t, args.heads, d, torch.finfo(dtype).bits // 8)}
        try:
            shape = (args.batch, t, args.heads, d)
            q, k, v, do = (torch.randn(shape, device="cuda", dtype=torch.float32) for _ in range(4))
            q, k = (torch.nn.functional.normalize(x, dim=-1) for x in (q, k))
            q, k, v = (x.to(dtype).requires_grad_(mode == "fwd+bwd") for x in (q, k, v))
            do = do.to(dtype)
            def call():
                if mode == "fwd":      # no autograd graph, as the JAX forward rows
                    with torch.no_grad():
                        return chunk_linear_attn(q, k, v, **options)[0]
                out = chunk_linear_attn(q, k, v, **options)[0]
                return torch.autograd.grad(out, (q, k, v), do)
            for _ in range(args.warmup):
                call()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            while len(times) < args.repeats and (len(times) < 3 or sum(times) < args.max_seconds):
                start.record()
                call()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            row.update(median_s=statistics.median(times), min_s=min(times), runs=len(times),
                       peak_bytes=torch.cuda.max_memory_allocated(), status="ok")
        except Exception as err:  # noqa: BLE001
            row["status"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
        rows.append(row)
        print(f"[fla] {mode:8s} d={d} T={t}: {row['status']}", flush=True)
    return rows


# ----------------------------------------------------------------------------- orchestration

def _spawn(args, impl: str, d: int, mode: str, tmp: pathlib.Path, config: str = "default") -> list[dict]:
    """Run a worker process; impl and mode may be comma-separated lists (one process for all)."""
    out = tmp / f"{impl.replace(',', '_')}-{d}-{mode.replace('+', '').replace(',', '_')}-{config}.json"
    cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker", impl, str(d), mode,
           "--worker-out", str(out), "--dtype", args.dtype, "--batch", str(args.batch),
           "--heads", str(args.heads), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--max-seconds", str(args.max_seconds), "--pallas-config", config,
           "--seqs", *map(str, args.seqs)]
    if args.smoke:
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


def _derived(row: dict, bandwidth: float | None) -> dict:
    """Achieved TFLOP/s and GB/s, and the fraction of the memory roofline (min bytes / peak BW / time)."""
    if row.get("status") != "ok":
        return row
    seconds = row["median_s"]
    row = {**row, "median_ms": 1e3 * seconds, "tflops": row["flops"] / seconds / 1e12,
           "gbps": row["bytes"] / seconds / 1e9}
    row["roofline_fraction"] = None if bandwidth is None else row["bytes"] / bandwidth / seconds
    return row


def markdown_table(result: dict) -> str:
    head = (f"Causal attention, {result['dtype']}, B={result['batch']}, H={result['heads']} on "
            f"{result['device']}, jax {result['jax_version']}, {result['date']}"
            f"{' (SMOKE: tiny shapes, CPU interpret mode; not a measurement)' if result['smoke'] else ''}\n\n")
    lines = ["| impl | mode | D | T | ms | TFLOP/s | GB/s | % mem roofline | peak MiB | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        ok = r.get("status") == "ok"
        fmt = lambda key, spec: format(r[key], spec) if ok and r.get(key) is not None else "-"  # noqa: E731
        roof = f"{100 * r['roofline_fraction']:.0f}" if ok and r.get("roofline_fraction") else "-"
        peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") else "-"
        name = r["impl"] + (f" ({r['variant']})" if r.get("variant") else "")
        lines.append(f"| {name} | {r['mode']} | {r['head_dim']} | {r['seq']} | {fmt('median_ms', '.3f')} | "
                     f"{fmt('tflops', '.1f')} | {fmt('gbps', '.0f')} | {roof} | {peak} | {r['status']} |")
    return head + "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        rows = run_fla_worker(args) if args.worker[0] == "fla" else run_worker(args)
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
                    rows += _spawn(args, ",".join(names), d, ",".join(MODES), pathlib.Path(tmp), config)
                continue
            for impl in impls:   # one process per row family: its peak memory is its own
                for config in (args.pallas_configs if impl == "pallas" else ["default"]):
                    for mode in MODES:
                        rows += _spawn(args, impl, d, mode, pathlib.Path(tmp), config)
    bandwidth = peak_bandwidth(info["device"])
    result = {"smoke": args.smoke, "device": info["device"], "platform": info["platform"],
              "jax_version": jax.__version__, "python": info["python"],
              "date": datetime.date.today().isoformat(), "dtype": args.dtype, "batch": args.batch,
              "heads": args.heads, "peak_bandwidth_bytes_per_s": bandwidth,
              "not_run": {i: "fla (flash-linear-attention) does not import here" for i in skipped},
              "rows": [_derived(r, bandwidth) for r in rows]}
    table = markdown_table(result)
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
