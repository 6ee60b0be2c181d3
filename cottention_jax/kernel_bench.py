"""Measuring the causal linear-attention kernels (used by experiments/bench_kernels.py).

A model of the work of one call (useful FLOPs, least HBM bytes, the device's peak
bandwidth), the JAX measurement of one (implementation, head dim, mode) over the
sequence lengths, and the results' throughput and Markdown table. Implementations:
  pallas   pallas_kernels.cosine_attn.chunked (once per pallas config: "default" or
           chunk,block_k,block_v,num_warps,num_stages,segments|auto)
  xla      pallas_kernels.cosine_attn.xla (chunk-parallel jnp)
  softmax  jax.nn.dot_product_attention(is_causal=True), cuDNN flash where it compiles
  naive    the quadratic form ((Q K~^T) * M) V
  fla      flash-linear-attention (PyTorch), measured by experiments/bench_fla_worker.py
Modes: "fwd" and "fwd+bwd" (the VJP in q, k, v from a random dO). FLOP and byte
models: benchmarks/NOTES.md.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from cottention_jax.benchmark import compiled_memory_bytes, describe_device, device_peak_bytes, median_time
from pallas_kernels.cosine_attn import chunked, reference, xla

__all__ = ["BenchSettings", "IMPLS", "MODES", "block_sizes_from_text", "flops", "markdown_table",
           "measure_jax", "min_bytes", "peak_bandwidth", "with_throughput"]

IMPLS = ("pallas", "xla", "softmax", "naive", "fla")
MODES = ("fwd", "fwd+bwd")
CHUNK = 64  # the chunk of the chunked FLOP model (pallas, xla and fla all use 64)
# Peak HBM bandwidth (bytes/s) by device kind, from the vendors' data sheets; first match wins.
PEAK_BANDWIDTH = (("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12), ("H200", 4.8e12),
                  ("GH200", 4.0e12), ("A100-SXM4-80GB", 2.039e12), ("A100 80GB PCIe", 1.935e12),
                  ("A100", 1.555e12), ("L40S", 0.864e12), ("L4", 0.3e12), ("B200", 8.0e12))


@dataclasses.dataclass(frozen=True)
class BenchSettings:
    """Shapes and timing of a sweep: (batch, seq, heads, head_dim) inputs in `dtype`."""

    seqs: tuple[int, ...]
    batch: int
    heads: int
    dtype: str
    warmup: int
    repeats: int
    max_seconds: float
    smoke: bool = False          # tiny shapes, Pallas in interpret mode (CPU)


def block_sizes_from_text(text: str):
    """None (the wrapper's defaults) or a chunked.BlockSizes from a --pallas-configs entry."""
    if text == "default":
        return None
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


# ----------------------------------------------------------------------------- the JAX measurement

def _jax_fn(impl: str, smoke: bool, pallas_config: str = "default"):
    """f(q, k, v, key_scale) -> out for one implementation."""

    def state0(q, v):
        return jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), jnp.float32)

    if impl == "pallas":
        sizes = block_sizes_from_text(pallas_config)
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

    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    q, k, v, do = (jax.random.normal(key, (b, t, h, d), jnp.float32) for key in keys)
    q, k = (x / jnp.linalg.norm(x, axis=-1, keepdims=True) for x in (q, k))
    w = jnp.broadcast_to(jnp.arange(1, t + 1, dtype=jnp.float32)[None, :, None] ** -0.5, (b, t, h))
    q, k, v, do = (x.astype(dtype) for x in (q, k, v, do))
    return [q, k, v, w, do]


def _build(impl, mode, smoke, softmax_impl, pallas_config):
    """The jitted call that is timed: args (q, k, v, w, dO)."""

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

    if smoke or jax.default_backend() != "gpu":
        return None
    x = jnp.zeros((1, 128, 1, d), dtype)
    try:
        jax.jit(lambda x: jax.nn.dot_product_attention(x, x, x, is_causal=True,
                                                       implementation="cudnn")).lower(x).compile()
        return "cudnn"
    except Exception:  # noqa: BLE001  (no cuDNN flash for this build / device)
        return None


def measure_jax(impl: str, d: int, mode: str, settings: BenchSettings, pallas_config: str = "default") -> list[dict]:
    """Rows for one implementation, head dim and mode over settings.seqs (increasing), each checked
    (first length) against a float32 reference, timed, and with compiled and peak memory."""
    dtype = jnp.dtype(settings.dtype)
    device = describe_device()["device"]
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    limit = (stats or {}).get("bytes_limit")
    softmax_impl = _softmax_implementation(settings.smoke, d, dtype) if impl == "softmax" else None
    pallas_variant = ("interpret " if settings.smoke else "") + pallas_config
    variant = {"softmax": softmax_impl or "xla", "pallas": pallas_variant}.get(impl, "")
    step, fn = _build(impl, mode, settings.smoke, softmax_impl, pallas_config)
    rows, failed = [], None
    for i, t in enumerate(sorted(settings.seqs)):
        row = {"impl": impl, "variant": variant, "mode": mode, "batch": settings.batch, "seq": t,
               "heads": settings.heads, "head_dim": d, "dtype": dtype.name}
        quadratic = impl == "naive" or (impl == "softmax" and softmax_impl is None)
        if failed:
            rows.append({**row, "status": f"skipped after {failed}"})
            continue
        if quadratic and limit and 4.0 * settings.batch * settings.heads * t * t * 4 > 0.6 * limit:
            rows.append({**row, "status": "skipped: T x T scores do not fit"})
            continue
        try:
            inputs = _inputs(settings.batch, t, settings.heads, d, dtype, seed=t)
            row["compiled_bytes"] = compiled_memory_bytes(step, *inputs)
            row["max_rel_error"] = _check(impl, mode, fn, inputs) if i == 0 else None
            row.update(median_time(step, *inputs, warmup=settings.warmup, repeats=settings.repeats,
                                   max_seconds=settings.max_seconds))
            row["peak_bytes"] = device_peak_bytes()
            row["status"] = "ok"
            del inputs
        except Exception as err:  # noqa: BLE001  (an out-of-memory or lowering failure is a result)
            failed = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            row["status"] = f"error: {failed}"
        rows.append(row)
        print(f"[{device}] {impl:8s} {mode:8s} d={d} T={t}: {row['status']}", flush=True)
    return rows


# ----------------------------------------------------------------------------- results

def with_throughput(row: dict, bandwidth: float | None) -> dict:
    """A measured row plus its work model (flops, bytes), achieved TFLOP/s and GB/s, and the
    fraction of the memory roofline (min bytes / peak bandwidth / time)."""
    if row.get("status") != "ok":
        return row
    shape = (row["batch"], row["seq"], row["heads"], row["head_dim"])
    work = {"flops": flops(row["impl"], row["mode"], *shape),
            "bytes": min_bytes(row["impl"], row["mode"], *shape, jnp.dtype(row["dtype"]).itemsize)}
    seconds = row["median_s"]
    row = {**row, **work, "median_ms": 1e3 * seconds, "tflops": work["flops"] / seconds / 1e12,
           "gbps": work["bytes"] / seconds / 1e9}
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
