"""Measure the kernels' launch parameters on this device and build a launch-table entry.

Used by `experiments/tune_kernels.py`. GPU (Triton) kernels: for one shape (B, T, H, D, dtype)
and every chunk size C in the sweep:

  1. every candidate `KernelLaunch` of every kernel (forward, dQ, dK~, dV) is
     compiled and timed alone, on the padded inputs the wrapper would pass it
     (a launch that fails to compile or run, e.g. too much shared memory, is
     recorded with its error and skipped);
  2. each kernel keeps its fastest launch; the chunk with the smallest sum over
     the four kernels (one forward + backward) wins;
  3. the winning `BlockSizes` is checked against the float32 reference on a
     slice and timed end to end through `causal_linear_attention_pallas`, beside the
     default it replaces.

The segment count of each trial is the one the wrapper would choose if every
kernel of that pass used the trial's launch; segment-sum kernels (only run
when segments > 1) are not part of a kernel's time but are part of the end-to-end time.

TPU (Mosaic) kernels (`pallas_tpu.py`): every candidate `TpuBlockSizes` (`tpu_candidates`:
chunks x block_k x block_v, blocks up to the padded head dim) is timed end to end, forward +
backward through `causal_linear_attention_pallas_tpu` (`run_tpu_trials`; a launch that fails
to compile or run is recorded with its error); `rank_tpu_trials` orders the working ones,
fastest first, and the caller keeps the fastest that `check_block_sizes` finds within
`tolerance(dtype)` of the float32 reference. `make_entry` builds the `"backend": "tpu"` row.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp

from pallas_kernels.cosine_attn import _kernels, launch_table, pallas, pallas_tpu, reference

__all__ = [
    "TuneShape",
    "Trial",
    "TpuTrial",
    "best_block_sizes",
    "candidate_launches",
    "check_block_sizes",
    "make_entry",
    "rank_tpu_trials",
    "run_trials",
    "run_tpu_trials",
    "time_block_sizes",
    "tolerance",
    "tpu_candidates",
]

_KERNELS = launch_table.KERNELS


@dataclasses.dataclass(frozen=True)
class TuneShape:
    """The representative call being tuned: q, k, v (B, T, H, D) in `dtype`."""

    batch: int
    seq: int
    heads: int
    head_dim: int
    dtype: str

    @property
    def padded_dim(self) -> int:
        """The head dim inside the GPU kernels (a power of two >= 16)."""
        return pallas.padded_head_dim(self.head_dim)

    @property
    def tpu_padded_dim(self) -> int:
        """The head dim inside the TPU kernels (a multiple of 128)."""
        return pallas_tpu.tpu_padded_head_dim(self.head_dim)


@dataclasses.dataclass(frozen=True)
class Trial:
    """One kernel with one launch at one chunk size: its median time, or why it has none."""

    kernel: str
    chunk: int
    launch: pallas.KernelLaunch
    seconds: float | None = None
    error: str | None = None


def candidate_launches(padded_dim: int, *, quick: bool = False) -> list[pallas.KernelLaunch]:
    """Blocks 32 / 64 / 128 (up to the padded dim), 2 / 4 / 8 warps, 1 to 3 stages.

    Not tried: 2 warps with blocks >= 64, which spill registers (on an H100: 55 ms
    instead of 1.4 ms for the forward at d = 128). `quick`: 4 and 8 warps, 2 and 3 stages.
    """
    blocks = [b for b in (16, 32, 64, 128) if b <= padded_dim and (b >= 32 or padded_dim < 32)]
    warps, stages = ((4, 8), (2, 3)) if quick else ((2, 4, 8), (1, 2, 3))
    return [pallas.KernelLaunch(b, w, s) for b in blocks for w in warps for s in stages if not (w == 2 and b >= 64)]


def _median_seconds(fn, args, warmup: int, repeats: int, max_seconds: float) -> float:
    """Median of synchronised calls after `warmup` untimed ones (at least 3 timed)."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times: list[float] = []
    while len(times) < max(repeats, 3) and (len(times) < 3 or sum(times) < max_seconds):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(shape: TuneShape, key) -> list[jax.Array]:
    """q^, k^ (unit rows), v, dO ~ N(0, 1) in the dtype; key_scale = n^-1/2 (B, T, H); S0 ~ N(0, 1)."""
    b, t, h, d = shape.batch, shape.seq, shape.heads, shape.head_dim
    kq, kk, kv, ko, ks = jax.random.split(key, 5)
    q, k = (
        x / jnp.linalg.norm(x, axis=-1, keepdims=True)
        for x in (jax.random.normal(kq, (b, t, h, d)), jax.random.normal(kk, (b, t, h, d)))
    )
    v, do = jax.random.normal(kv, (b, t, h, d)), jax.random.normal(ko, (b, t, h, d))
    w = jnp.broadcast_to(jnp.arange(1, t + 1, dtype=jnp.float32)[None, :, None] ** -0.5, (b, t, h))
    s0 = jax.random.normal(ks, (b, h, d, d))
    dtype = jnp.dtype(shape.dtype)
    return [q.astype(dtype), k.astype(dtype), v.astype(dtype), w, s0, do.astype(dtype)]


def _kernel_call(kernel: str, plan, args, interpret: bool):
    """(fn, fn's args) running one kernel on the padded inputs the wrapper would build."""
    q, k, v, w, s0, do = args
    qp, kp, vp, wp = pallas._padded_inputs(q, k, v, w, plan)
    dop = pallas._pad_seq(do, qp.shape[1])
    states = jnp.broadcast_to(
        pallas._pad_state(s0)[:, :, None], (q.shape[0], q.shape[2], plan.n_segments, qp.shape[-1], vp.shape[-1])
    )
    calls = {
        "forward": (lambda q, k, v, w, s: _kernels.forward(q, k, v, w, s, plan, interpret), (qp, kp, vp, wp, states)),
        "dq": (lambda k, v, w, do, s: _kernels.backward_dq(k, v, w, do, s, plan, interpret), (kp, vp, wp, dop, states)),
        "dk": (
            lambda q, k, v, w, do, s: _kernels.backward_dk(q, k, v, w, do, s, kp.dtype, plan, interpret),
            (qp, kp, vp, wp, dop, states),
        ),
        "dv": (
            lambda q, k, w, do, s: _kernels.backward_dv(q, k, w, do, s, vp.dtype, plan, interpret),
            (qp, kp, wp, dop, states),
        ),
    }
    return calls[kernel]


def _error_text(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:160] if lines else ''}"


def run_trials(
    shape: TuneShape,
    chunks: Iterable[int],
    launches: Iterable[pallas.KernelLaunch],
    *,
    interpret: bool = False,
    warmup: int = 2,
    repeats: int = 10,
    max_seconds: float = 1.0,
    seed: int = 0,
) -> Iterator[Trial]:
    """Yield a Trial for every (chunk, kernel, launch); compile or run errors become Trial.error."""
    args = _inputs(shape, jax.random.PRNGKey(seed))
    q, k, v = args[:3]
    for chunk in chunks:
        for kernel in _KERNELS:
            for launch in launches:
                sizes = pallas.BlockSizes.uniform(
                    chunk=chunk, block=launch.block, num_warps=launch.num_warps, num_stages=launch.num_stages
                )
                try:
                    plan = pallas.launch_plan(q.shape, k.shape, v.shape, q.dtype, sizes, kernel != "forward")
                    fn, fn_args = _kernel_call(kernel, plan, args, interpret)
                    compiled = jax.jit(fn).lower(*fn_args).compile()
                    seconds = _median_seconds(compiled, fn_args, warmup, repeats, max_seconds)
                    yield Trial(kernel, chunk, launch, seconds=seconds)
                except Exception as err:  # noqa: BLE001  (a launch that cannot compile or run is a result)
                    yield Trial(kernel, chunk, launch, error=_error_text(err))


def best_block_sizes(trials: list[Trial]) -> tuple[pallas.BlockSizes, dict[str, float]]:
    """The fastest launch per kernel at the chunk whose four best kernels sum to the least time.

    Returns (BlockSizes, {kernel: seconds}). ValueError if no chunk has a working launch for
    every kernel.
    """
    best: dict[int, dict[str, tuple[float, pallas.KernelLaunch]]] = {}  # chunk -> kernel -> (seconds, launch)
    for trial in trials:
        if trial.seconds is None:
            continue
        per_kernel = best.setdefault(trial.chunk, {})
        if trial.kernel not in per_kernel or trial.seconds < per_kernel[trial.kernel][0]:
            per_kernel[trial.kernel] = (trial.seconds, trial.launch)
    complete = {c: kernels for c, kernels in best.items() if set(kernels) == set(_KERNELS)}
    if not complete:
        raise ValueError(
            f"no chunk size has a working launch for all of {_KERNELS}; "
            f"errors: {sorted({t.error for t in trials if t.error})[:3]}"
        )
    chunk = min(complete, key=lambda c: sum(seconds for seconds, _ in complete[c].values()))
    kernels = complete[chunk]
    sizes = pallas.BlockSizes(
        chunk=chunk, forward=kernels["forward"][1], dq=kernels["dq"][1], dk=kernels["dk"][1], dv=kernels["dv"][1]
    )
    return sizes, {name: kernels[name][0] for name in _KERNELS}


Sizes = pallas.BlockSizes | pallas_tpu.TpuBlockSizes


def _op(sizes: Sizes | None):
    """The op a launch belongs to: the TPU kernels for a `TpuBlockSizes`, else the GPU kernels."""
    if isinstance(sizes, pallas_tpu.TpuBlockSizes):
        return pallas_tpu.causal_linear_attention_pallas_tpu
    return pallas.causal_linear_attention_pallas


def time_block_sizes(
    shape: TuneShape,
    sizes: Sizes | None,
    *,
    interpret: bool = False,
    warmup: int = 2,
    repeats: int = 10,
    max_seconds: float = 2.0,
    seed: int = 0,
    modes: tuple[str, ...] = ("forward", "fwd_bwd"),
) -> dict:
    """End-to-end median seconds of the op with `sizes` (a `BlockSizes`, None for the GPU default, or a
    `TpuBlockSizes`): {"forward": s, "fwd_bwd": s}, the `modes` asked for."""
    unknown = sorted(set(modes) - {"forward", "fwd_bwd"})
    if unknown:
        raise ValueError(f"modes must be 'forward' and / or 'fwd_bwd'; got {unknown}")
    q, k, v, w, s0, do = _inputs(shape, jax.random.PRNGKey(seed))
    op = _op(sizes)

    def forward(q, k, v):
        return op(q, k, v, w, s0, interpret=interpret, block_sizes=sizes)[0]

    def fwd_bwd(q, k, v):
        out, vjp = jax.vjp(forward, q, k, v)
        return vjp(do)

    times = {}
    for name, fn in (("forward", forward), ("fwd_bwd", fwd_bwd)):
        if name in modes:
            compiled = jax.jit(fn).lower(q, k, v).compile()
            times[name] = _median_seconds(compiled, (q, k, v), warmup, repeats, max_seconds)
    return times


def check_block_sizes(
    shape: TuneShape, sizes: Sizes, *, interpret: bool = False, seq: int = 1024, seed: int = 1
) -> float:
    """Largest relative error (Frobenius) of out, final state and the five gradients vs the
    float32 reference, on one batch row and two heads of `seq` positions (GPU or TPU kernels,
    by the type of `sizes`)."""
    small = dataclasses.replace(shape, batch=1, heads=min(shape.heads, 2), seq=min(shape.seq, seq))
    q, k, v, w, s0, do = _inputs(small, jax.random.PRNGKey(seed))
    op = _op(sizes)

    def outputs_and_grads(fn, d_out, *args):
        (out, final), vjp = jax.vjp(fn, *args)
        return [out, final, *vjp((d_out, jnp.ones_like(final)))]

    def errors(q, k, v, w, s0, do):  # one program: kernels and reference compile once
        kernels = lambda *a: op(*a, interpret=interpret, block_sizes=sizes)  # noqa: E731
        got = outputs_and_grads(kernels, do, q, k, v, w, s0)
        want = outputs_and_grads(reference.causal_linear_attention_reference, do.astype(jnp.float32), q, k, v, w, s0)

        def rel(a, e):
            a, e = a.astype(jnp.float32), e.astype(jnp.float32)
            return jnp.linalg.norm(a - e) / jnp.maximum(jnp.linalg.norm(e), 1e-30)

        return jnp.stack([rel(a, e) for a, e in zip(got, want, strict=True)])

    return float(jnp.max(jax.jit(errors)(q, k, v, w, s0, do)))


def tolerance(dtype) -> float:
    """The largest `check_block_sizes` error a launch may have: 1e-3 for float32 inputs, 5e-2 for
    16-bit ones (their MXU operands are rounded to the input dtype)."""
    return 1e-3 if jnp.dtype(dtype) == jnp.float32 else 5e-2


def make_entry(device: jax.Device, shape: TuneShape, sizes: Sizes, measured: dict, source: str) -> dict:
    """A launch-table entry for `device`, the shape's dtype and padded head dim (`device` and
    `measured_on` are its kind: edit `device` to a prefix to let the row serve a device family).
    A `TpuBlockSizes` makes a `"backend": "tpu"` row (head dim padded to a multiple of 128)."""
    target: dict
    if isinstance(sizes, pallas_tpu.TpuBlockSizes):
        target = {"head_dim": shape.tpu_padded_dim}
    else:
        target = {"compute_capability": getattr(device, "compute_capability", None), "head_dim": shape.padded_dim}
    return launch_table.validate_entry(
        {
            "device": device.device_kind,
            "measured_on": device.device_kind,
            "dtype": jnp.dtype(shape.dtype).name,
            **target,
            **sizes.to_entry(),
            "source": source,
            "measured": measured,
        }
    )


# ----------------------------------------------------------------------------- TPU (Mosaic) kernels


@dataclasses.dataclass(frozen=True)
class TpuTrial:
    """One TPU launch: its median forward + backward seconds, or why it has none."""

    sizes: pallas_tpu.TpuBlockSizes
    seconds: float | None = None
    error: str | None = None


def kernel_platform(asked: str | None, smoke: bool, backend: str) -> str:
    """Which kernels a measuring script (the tuner, the kernel benchmark) works on: `asked`
    (--platform), else JAX's backend. With `smoke` any backend will do (interpret mode; default the
    GPU kernels); otherwise the backend must be a GPU or a TPU and match `asked`. ValueError if not."""
    if smoke:
        return asked or "gpu"
    if backend not in ("gpu", "tpu"):
        raise ValueError(
            f"JAX sees {backend}, not a GPU or a TPU. Use --smoke to check the logic on the CPU "
            "(add --platform tpu for the TPU kernels)."
        )
    if asked and asked != backend:
        raise ValueError(f"--platform {asked} needs JAX's backend to be {asked}; JAX sees {backend}.")
    return backend


def tpu_candidates(
    head_dim: int, chunks: Iterable[int] = (128, 256), *, quick: bool = False
) -> list[pallas_tpu.TpuBlockSizes]:
    """Every (chunk, block_k, block_v): chunks as given (default 128 and 256, the MXU widths: 128
    on v4 / v5, 256 on v6e and later); blocks 128, 256 and the whole padded head dim, each dividing
    it (a whole-dim block reads every input once; smaller ones give more parallel programs and a
    smaller VMEM state). `quick`: whole-dim blocks only. ValueError for a chunk the kernels refuse."""
    padded = pallas_tpu.tpu_padded_head_dim(head_dim)
    blocks = [padded] if quick else sorted({b for b in (128, 256) if padded % b == 0} | {padded})
    return [
        pallas_tpu.TpuBlockSizes(chunk=chunk, block_k=bk, block_v=bv)
        for chunk in dict.fromkeys(chunks)
        for bk in blocks
        for bv in blocks
    ]


def run_tpu_trials(
    shape: TuneShape,
    candidates: Iterable[pallas_tpu.TpuBlockSizes],
    *,
    interpret: bool = False,
    warmup: int = 2,
    repeats: int = 10,
    max_seconds: float = 1.0,
    seed: int = 0,
) -> Iterator[TpuTrial]:
    """Yield a TpuTrial per candidate: forward + backward through `causal_linear_attention_pallas_tpu`
    (the wrapper's padding included), timed end to end; compile or run errors become TpuTrial.error."""
    for sizes in candidates:
        try:
            seconds = time_block_sizes(
                shape,
                sizes,
                interpret=interpret,
                warmup=warmup,
                repeats=repeats,
                max_seconds=max_seconds,
                seed=seed,
                modes=("fwd_bwd",),
            )["fwd_bwd"]
            yield TpuTrial(sizes, seconds=seconds)
        except Exception as err:  # noqa: BLE001  (a launch that cannot compile or run is a result)
            yield TpuTrial(sizes, error=_error_text(err))


def rank_tpu_trials(trials: Iterable[TpuTrial]) -> list[TpuTrial]:
    """The trials that ran, fastest first; ValueError if none did."""
    trials = list(trials)
    ran = sorted((t for t in trials if t.seconds is not None), key=lambda t: t.seconds or 0.0)
    if not ran:
        raise ValueError(f"no TPU launch compiled and ran; errors: {sorted({t.error for t in trials if t.error})[:3]}")
    return ran
