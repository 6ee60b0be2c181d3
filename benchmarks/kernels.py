"""Measuring the causal linear-attention kernels (used by benchmarks/bench_kernels.py).

A model of the work of one call (useful FLOPs, least HBM bytes, the device's peak
bandwidth), the JAX measurement of every (implementation, mode, sequence length) at
one head dim in one process, and the results' throughput and Markdown table.
Implementations:
  pallas   pallas_kernels.cosine_attn.pallas with its default (tuned) block sizes
  xla      pallas_kernels.cosine_attn.xla (chunk-parallel jnp)
  softmax  jax.nn.dot_product_attention(is_causal=True): cuDNN flash on a GPU, XLA elsewhere
  naive    the quadratic form ((Q K~^T) * M) V
  fla      flash-linear-attention (PyTorch), measured by benchmarks/bench_fla_worker.py
Modes: "fwd" and "fwd+bwd" (the VJP in q, k, v from a random dO). FLOP and byte
models: benchmarks/NOTES.md.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from benchmarks.measure import median_time
from cottention_jax.memory import compiled_bytes
from pallas_kernels.cosine_attn import pallas, reference, xla

__all__ = [
    "BenchSettings",
    "IMPLS",
    "MODES",
    "check_error",
    "flops",
    "markdown_table",
    "measure_jax",
    "min_bytes",
    "peak_bandwidth",
    "with_throughput",
]

IMPLS = ("pallas", "xla", "softmax", "naive", "fla")
MODES = ("fwd", "fwd+bwd")
CHUNK = 64  # the chunk of the chunked FLOP model (pallas, xla and fla all use 64)
# Peak HBM bandwidth (bytes/s) by device kind, from the vendors' data sheets; first match wins.
PEAK_BANDWIDTH = (
    ("H100 PCIe", 2.0e12),
    ("H100 NVL", 3.9e12),
    ("H100", 3.35e12),
    ("H200", 4.8e12),
    ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("L4", 0.3e12),
    ("B200", 8.0e12),
)


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
    smoke: bool = False  # tiny shapes, Pallas in interpret mode (CPU)


# ----------------------------------------------------------------------------- models of work


def flops(impl: str, mode: str, b: int, t: int, h: int, d: int) -> float:
    """Useful FLOPs of one call (benchmarks/NOTES.md): chunked, quadratic or causal flash."""
    if impl in ("pallas", "xla", "fla"):  # per position: C x C block + two d x d products
        fwd = 2.0 * b * h * t * (CHUNK * 2 * d + 2 * d * d)
        return fwd * (3.5 if mode == "fwd+bwd" else 1.0)  # backward: 2.5x the forward
    if impl == "naive":  # full T x T scores, masked
        fwd = 2.0 * b * h * t * t * 2 * d
        return fwd * (3.0 if mode == "fwd+bwd" else 1.0)
    fwd = 2.0 * b * h * t * t * 2 * d / 2  # softmax: causal flash skips half
    return fwd * (3.5 if mode == "fwd+bwd" else 1.0)


def min_bytes(impl: str, mode: str, b: int, t: int, h: int, d: int, itemsize: int) -> float:
    """Least HBM traffic of one call: read the inputs, write the outputs (once each)."""
    tensor = b * t * h * d * itemsize
    scale = b * t * h * 4 if impl in ("pallas", "xla", "naive") else 0  # key_scale, float32
    fwd = 4 * tensor + scale  # q, k, v in; o out
    if mode == "fwd":
        return fwd
    return fwd + 4 * tensor + scale + 3 * tensor + scale  # q, k, v, dO in; dq, dk, dv out


def peak_bandwidth(device_kind: str) -> float | None:
    for name, bandwidth in PEAK_BANDWIDTH:
        if name in device_kind:
            return bandwidth
    return None


# ----------------------------------------------------------------------------- the JAX measurement


def _jax_fn(impl: str, smoke: bool):
    """f(q, k, v, key_scale) -> out for one implementation."""

    def state0(q, v):
        return jnp.zeros((q.shape[0], q.shape[2], q.shape[3], v.shape[3]), jnp.float32)

    if impl == "pallas":
        return lambda q, k, v, w: pallas.causal_linear_attention_pallas(q, k, v, w, state0(q, v), interpret=smoke)[0]
    if impl == "xla":
        return lambda q, k, v, w: xla.causal_linear_attention_xla(q, k, v, w, state0(q, v))[0]
    if impl == "naive":

        def naive(q, k, v, w):
            t = q.shape[1]
            k_scaled = (k.astype(jnp.float32) * w[..., None]).astype(k.dtype)
            scores = jnp.einsum("bthd,bshd->bhts", q, k_scaled, preferred_element_type=jnp.float32)
            scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, 0.0).astype(q.dtype)
            return jnp.einsum("bhts,bshe->bthe", scores, v)

        return naive
    implementation = None if smoke or jax.default_backend() != "gpu" else "cudnn"  # cuDNN flash on a GPU
    return lambda q, k, v, w: jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)


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


def _timed_call(fn, mode):
    """The call that is timed, args (q, k, v, w, dO): the output, or the VJP in q, k, v."""
    if mode == "fwd":
        return lambda q, k, v, w, do: fn(q, k, v, w)

    def fwd_bwd(q, k, v, w, do):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, w), q, k, v)
        return vjp(do)

    return fwd_bwd


def check_error(impl: str, mode: str, d: int, settings: BenchSettings, fn=None) -> float:
    """Max relative error (Frobenius) of out or (dq, dk, dv) vs the float32 reference, on a slice
    (batch 1, <= 512 positions, <= 4 heads) so the check costs little at any benchmark size.
    `fn` (q, k, v, key_scale) -> out replaces impl's own function (e.g. the TPU kernels)."""
    q, k, v, w, do = _inputs(1, min(512, max(settings.seqs)), min(4, settings.heads), d, settings.dtype, seed=7)
    got = jax.jit(_timed_call(fn or _jax_fn(impl, settings.smoke), mode))(q, k, v, w, do)
    want = jax.jit(_timed_call(_reference_fn(impl), mode))(q, k, v, w, do.astype(jnp.float32))
    got, want = jax.tree.leaves(got), jax.tree.leaves(want)

    def rel(a, e):
        a, e = jnp.asarray(a, jnp.float32), jnp.asarray(e, jnp.float32)
        return float(jnp.linalg.norm(a - e) / jnp.maximum(jnp.linalg.norm(e), 1e-30))

    return max(rel(a, e) for a, e in zip(got, want, strict=True))


def _fits(impl: str, t: int, settings: BenchSettings, limit: int | None) -> bool:
    """Quadratic forms (naive; softmax off-GPU) are skipped when the T x T scores exceed 60% of memory."""
    quadratic = impl == "naive" or (impl == "softmax" and (settings.smoke or jax.default_backend() != "gpu"))
    return not (quadratic and limit and 4.0 * settings.batch * settings.heads * t * t * 4 > 0.6 * limit)


def measure_jax(
    impls, d: int, settings: BenchSettings, log=print, fns: dict | None = None, variants: dict | None = None
) -> list[dict]:
    """Rows for every (impl, mode, seq) at head dim d, in one process.

    For each sequence length the inputs are made once and shared; each (impl, mode)
    is compiled once (`lower().compile()`: its memory analysis and its timing use that
    one executable), then timed. After an (impl, mode) fails (e.g. out of memory) its
    longer sequences are skipped. Memory is XLA's buffer assignment of the call
    (arguments + outputs + temporaries), exact per call without a process per row.
    `fns` / `variants` replace an impl's function (q, k, v, key_scale) -> out and its label
    (bench_kernels.py's TPU kernels as "pallas").
    """
    dtype = jnp.dtype(settings.dtype)
    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    limit = (stats or {}).get("bytes_limit")
    variant = {
        "softmax": "xla" if settings.smoke or jax.default_backend() != "gpu" else "cudnn",
        "pallas": "interpret" if settings.smoke else "tuned defaults",
        **(variants or {}),
    }
    fns = {impl: (fns or {}).get(impl) or _jax_fn(impl, settings.smoke) for impl in impls}
    rows, failed = [], {}
    for t in sorted(settings.seqs):
        inputs = _inputs(settings.batch, t, settings.heads, d, dtype, seed=t)
        for impl in impls:
            for mode in MODES:
                row = {
                    "impl": impl,
                    "variant": variant.get(impl, ""),
                    "mode": mode,
                    "batch": settings.batch,
                    "seq": t,
                    "heads": settings.heads,
                    "head_dim": d,
                    "dtype": dtype.name,
                }
                if (impl, mode) in failed:
                    row["status"] = f"skipped after {failed[impl, mode]}"
                elif not _fits(impl, t, settings, limit):
                    row["status"] = "skipped: T x T scores do not fit"
                else:
                    try:
                        compiled = jax.jit(_timed_call(fns[impl], mode)).lower(*inputs).compile()
                        row["compiled_bytes"] = compiled_bytes(compiled)
                        row.update(
                            median_time(
                                compiled,
                                *inputs,
                                warmup=settings.warmup,
                                repeats=settings.repeats,
                                max_seconds=settings.max_seconds,
                            )
                        )
                        row["status"] = "ok"
                        del compiled
                    except Exception as err:  # noqa: BLE001  (an out-of-memory or lowering failure is a result)
                        failed[impl, mode] = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:200]}"
                        row["status"] = f"error: {failed[impl, mode]}"
                rows.append(row)
                log(f"{impl:8s} {mode:8s} d={d} T={t}: {row['status']}")
        del inputs
    for impl in impls:  # correctness, once per (impl, mode), on a small slice
        for mode in MODES:
            try:
                error = check_error(impl, mode, d, settings, fns[impl])
            except Exception:  # noqa: BLE001  (the rows already carry the failure)
                error = None
            for row in rows:
                if row["impl"] == impl and row["mode"] == mode:
                    row["max_rel_error"] = error
    return rows


# ----------------------------------------------------------------------------- results


def with_throughput(row: dict, bandwidth: float | None) -> dict:
    """A measured row plus its work model (flops, bytes), achieved TFLOP/s and GB/s, and the
    fraction of the memory roofline (min bytes / peak bandwidth / time)."""
    if row.get("status") != "ok":
        return row
    shape = (row["batch"], row["seq"], row["heads"], row["head_dim"])
    work = {
        "flops": flops(row["impl"], row["mode"], *shape),
        "bytes": min_bytes(row["impl"], row["mode"], *shape, jnp.dtype(row["dtype"]).itemsize),
    }
    seconds = row["median_s"]
    row = {
        **row,
        **work,
        "median_ms": 1e3 * seconds,
        "tflops": work["flops"] / seconds / 1e12,
        "gbps": work["bytes"] / seconds / 1e9,
    }
    row["roofline_fraction"] = None if bandwidth is None else row["bytes"] / bandwidth / seconds
    return row


def markdown_table(result: dict) -> str:
    head = (
        f"Causal attention, {result['dtype']}, B={result['batch']}, H={result['heads']} on "
        f"{result['device']}, jax {result['jax_version']}, {result['date']}"
        f"{' (SMOKE: tiny shapes, CPU interpret mode; not a measurement)' if result['smoke'] else ''}. "
        "Memory: XLA's buffer assignment of the call (JAX rows), the allocator's peak (FLA, marked *).\n\n"
    )
    lines = [
        "| impl | mode | D | T | ms | TFLOP/s | GB/s | % mem roofline | memory MiB | max rel. error | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ok = r.get("status") == "ok"

        def fmt(key, spec, r=r, ok=ok):  # a cell of this row, "-" when it did not run
            return format(r[key], spec) if ok and r.get(key) is not None else "-"

        roof = f"{100 * r['roofline_fraction']:.0f}" if ok and r.get("roofline_fraction") else "-"
        memory = (
            f"{r['compiled_bytes'] / 2**20:.0f}"
            if r.get("compiled_bytes")
            else f"{r['peak_bytes'] / 2**20:.0f}*"
            if r.get("peak_bytes")
            else "-"
        )
        error = f"{r['max_rel_error']:.1e}" if r.get("max_rel_error") is not None else "-"
        name = r["impl"] + (f" ({r['variant']})" if r.get("variant") else "")
        lines.append(
            f"| {name} | {r['mode']} | {r['head_dim']} | {r['seq']} | {fmt('median_ms', '.3f')} | "
            f"{fmt('tflops', '.1f')} | {fmt('gbps', '.0f')} | {roof} | {memory} | {error} | {r['status']} |"
        )
    return head + "\n".join(lines) + "\n"
