"""A paper MODEL (nothing here is measured) of the HBM traffic and FLOPs of causal linear attention on
a TPU: the `xla` form (pallas_kernels/cosine_attn/xla.py) against the planned Pallas TPU kernel
(pallas_kernels/cosine_attn/pallas_tpu.py, as designed in issue 23), per call, forward and
forward + backward (one training step's op). Explanation and results: benchmarks/NOTES.md,
"TPU kernel: HBM traffic, a model (issue 23)".

    python benchmarks/tpu_hbm_model.py                      # B=8 H=16 T=16384 D=128 bfloat16
    python benchmarks/tpu_hbm_model.py --dtype float32 --seq 65536

Only the op is counted: q, k, v (input dtype), key_scale and the states (float32) in, out / the
gradients out. The L2 normalisation, the key-scale computation and the casts around the op are the
same for both forms and left out. No GQA (KV = H); equal head dims Dk = Dv = D.

Symbols (bytes; s = the input dtype's itemsize; GB below are 1e9 bytes):
  xla form (chunk Cx, Tx = T padded to a multiple of Cx, Nx = Tx / Cx)
    X  = B T H D s      one q / k / v / out / dO-sized tensor in the input dtype
    X4 = B Tx H D 4     the same, float32, head-major chunks (the form computes in float32)
    W  = B T H 4        key_scale (float32);  W4 = B Tx H 4 its chunked copy
    P  = B H Nx D D 4   one float32 D x D state per chunk and head (U_c, H_c, Q_c^T dO_c, G_c)
    A  = B H Nx Cx Cx 4 the in-chunk C x C score blocks, float32
    S  = B H D D 4      one state per head (S0, S_T, dS_T, dS0)
  kernel (chunk C, Tp = T padded to a multiple of C, Dp = D padded to a multiple of 128,
          nb = Dp / 128 head-dim blocks of 128)
    Xp = B Tp H Dp s,  Wp = B H Tp 4,  Sp = B H Dp Dp 4  (= X, W, S when nothing is padded)

Two fusion scenarios bracket the xla form (XLA's fusion decisions are not modelled exactly):
  fused    every elementwise op (cast, transpose, pad, scale, mask, add) fuses into the matmul
           that produces or consumes it, so q, k, v, dO are read in the input dtype by every
           matmul that uses them; every matmul output is written once in float32 and read once by
           each consumer; a cumsum reads its input once and writes once.
  unfused  every jnp op / einsum output that is an operand of a later matmul lands in HBM: the
           float32 chunked copies of q, k, v / 2^c, key_scale (and dO), K~ = k w, the unmasked
           and the masked scores, the cumsum and the "+ S0" of the prefix sums, each matmul's
           output, and the sums of two matmuls.
The xla form's einsums run at precision=HIGHEST: on a TPU a float32 matmul in 6 bfloat16 passes
(the docstring of jax.lax.Precision, jax 0.12), so its MXU time is 6x its nominal FLOPs.

Chips (vendor peak figures, Google Cloud TPU documentation, per chip): TPU v5e 819 GB/s HBM and
197 TFLOP/s bf16; TPU v5p 2765 GB/s and 459 TFLOP/s. Ridge point = peak FLOP/s / bandwidth.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: import `benchmarks` from the root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

__all__ = [
    "CHIPS",
    "ITEMSIZE",
    "Chip",
    "Shape",
    "Term",
    "kernel_backward_flops",
    "kernel_forward_flops",
    "kernel_grid_steps",
    "kernel_symbols",
    "kernel_terms",
    "key_scale_lane_padding",
    "main",
    "render",
    "summary",
    "term_bytes",
    "total_bytes",
    "xla_backward_flops",
    "xla_forward_flops",
    "xla_symbols",
    "xla_terms",
]

ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4}
LANES = 128  # TPU lane width: the kernel pads head dims to a multiple of it and splits them in blocks of it
HIGHEST_PASSES = 6  # bfloat16 MXU passes of a float32 matmul at precision=HIGHEST on a TPU
KERNEL_CHUNK = 128  # the kernel's chunk C on v5e / v5p


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    bandwidth: float  # HBM bytes/s, vendor peak
    bf16_flops: float  # dense bf16 MXU FLOP/s, vendor peak

    @property
    def ridge(self) -> float:
        """FLOP per HBM byte above which a kernel at both peaks is compute-bound."""
        return self.bf16_flops / self.bandwidth


CHIPS = (Chip("TPU v5e", 819e9, 197e12), Chip("TPU v5p", 2765e9, 459e12))


@dataclasses.dataclass(frozen=True)
class Shape:
    """q (B, T, H, D), k and v (B, T, H, D) in a dtype of `itemsize` bytes (no GQA: KV = H)."""

    batch: int
    heads: int
    seq: int
    head_dim: int
    itemsize: int


@dataclasses.dataclass(frozen=True)
class Term:
    """One HBM access pattern of the model: what a step reads and writes, as {symbol: count}."""

    phase: str  # "fwd" or "bwd"
    name: str
    read: dict
    written: dict


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


def xla_symbols(shape: Shape, chunk: int) -> dict[str, int]:
    """The xla form's sizes in bytes (module docstring)."""
    b, h, t, d, s = shape.batch, shape.heads, shape.seq, shape.head_dim, shape.itemsize
    tx = _ceil_to(t, chunk)
    n = tx // chunk
    return {
        "X": b * t * h * d * s,  # an input / output tensor in the input dtype
        "X4": b * tx * h * d * 4,  # its float32 chunked copy, or a matmul's (C, D) float32 output
        "W": b * t * h * 4,  # key_scale / its cotangent, float32
        "W4": b * tx * h * 4,  # key_scale's float32 chunked copy
        "P": b * h * n * d * d * 4,  # per-chunk D x D float32 states: B H (Tx / Cx) D^2 4
        "A": b * h * n * chunk * chunk * 4,  # in-chunk C x C float32 scores: B H Tx Cx 4
        "S": b * h * d * d * 4,  # one state per head
    }


def kernel_symbols(shape: Shape, chunk: int) -> dict[str, int]:
    """The kernel's sizes in bytes: padded (Xp, Wp, Sp) and as the caller holds them (X, W, S)."""
    b, h, t, d, s = shape.batch, shape.heads, shape.seq, shape.head_dim, shape.itemsize
    tp, dp = _ceil_to(t, chunk), _ceil_to(d, LANES)
    return {
        "Xp": b * tp * h * dp * s,  # q / k / v / out viewed (free reshape) as (B, Tp, H * Dp)
        "Wp": b * h * tp * 4,  # key_scale as (B, H, Tp, 1) float32
        "Sp": b * h * dp * dp * 4,  # a state (B, H, Dp, Dp) float32
        "X": b * t * h * d * s,
        "W": b * t * h * 4,
        "S": b * h * d * d * 4,
    }


def term_bytes(counts: dict, symbols: dict[str, int]) -> int:
    return sum(c * symbols[k] for k, c in counts.items())


def total_bytes(terms: list[Term], symbols: dict[str, int], phase: str | None = None) -> int:
    """Bytes read + written by `terms` (of one phase, or all)."""
    return sum(term_bytes(t.read, symbols) + term_bytes(t.written, symbols) for t in terms if phase in (None, t.phase))


def xla_terms(fused: bool) -> list[Term]:
    """HBM traffic of xla.causal_linear_attention_xla's forward (`_forward`) and backward (`_bwd`),
    step by step, in the fused or the unfused scenario (module docstring). The same step names in
    both scenarios; a step that only the unfused scenario has is empty ({}) in the fused one.
    The custom_vjp's residuals are the inputs, so a training step's forward is `_forward` as is.
    """

    def step(phase, name, fused_rw, unfused_rw):
        read, written = fused_rw if fused else unfused_rw
        return Term(phase, name, read, written)

    none = ({}, {})
    return [
        # ---------------------------------------------------------------- forward (_forward)
        step(
            "fwd",
            "range exponent c: max abs(v) over T, Dv; abs(S0)",
            ({"X": 1, "S": 1}, {}),
            ({"X": 1, "S": 1}, {}),
        ),
        step(
            "fwd",
            "float32 chunked copies of q, k, v / 2^c, key_scale",
            none,
            ({"X": 3, "W": 1}, {"X4": 3, "W4": 1}),
        ),
        step("fwd", "K~ = k * key_scale", none, ({"X4": 1, "W4": 1}, {"X4": 1})),
        step(
            "fwd",
            "U_c = K~_c^T V_c (matmul)",
            ({"X": 2, "W": 1}, {"P": 1}),
            ({"X4": 2}, {"P": 1}),
        ),
        step(
            "fwd",
            "H_c = S0 + exclusive cumsum over chunks of U",
            ({"P": 1, "S": 1}, {"P": 1}),
            ({"P": 2, "S": 1}, {"P": 2}),
        ),
        step("fwd", "S_T = H_last + U_last, x 2^c", ({"S": 2}, {"S": 1}), ({"S": 2}, {"S": 1})),
        step(
            "fwd",
            "scores Q_c K~_c^T (matmul), mask",
            ({"X": 2, "W": 1}, {"A": 1}),
            ({"X4": 2}, {"A": 1}),
        ),
        step("fwd", "scores * key_scale, mask: own pass", none, ({"A": 1, "W4": 1}, {"A": 1})),
        step("fwd", "scores V_c (matmul)", ({"A": 1, "X": 1}, {"X4": 1}), ({"A": 1, "X4": 1}, {"X4": 1})),
        step(
            "fwd",
            "Q_c H_c (matmul) [fused: + the scores V, x 2^c, out in dtype]",
            ({"X": 1, "P": 1, "X4": 1}, {"X": 1}),
            ({"X4": 1, "P": 1}, {"X4": 1}),
        ),
        step("fwd", "out = sum of the two, x 2^c, to (B,T,H,D) dtype", none, ({"X4": 2}, {"X": 1})),
        # ---------------------------------------------------------------- backward (_bwd)
        step(
            "bwd",
            "range exponent c again: max abs(v); abs(S0)",
            ({"X": 1, "S": 1}, {}),
            ({"X": 1, "S": 1}, {}),
        ),
        step(
            "bwd",
            "float32 chunked copies of q, k, v / 2^c, dO, key_scale",
            none,
            ({"X": 4, "W": 1}, {"X4": 4, "W4": 1}),
        ),
        step("bwd", "K~ = k * key_scale", none, ({"X4": 1, "W4": 1}, {"X4": 1})),
        step(
            "bwd",
            "U_c = K~_c^T V_c again (matmul)",
            ({"X": 2, "W": 1}, {"P": 1}),
            ({"X4": 2}, {"P": 1}),
        ),
        step(
            "bwd",
            "H_c = S0 + exclusive cumsum of U again",
            ({"P": 1, "S": 1}, {"P": 1}),
            ({"P": 2, "S": 1}, {"P": 2}),
        ),
        step(
            "bwd",
            "dp = mask(dO_c V_c^T) (matmul)",
            ({"X": 2}, {"A": 1}),
            ({"X4": 2}, {"A": 1}),
        ),
        step("bwd", "mask of dp: own pass", none, ({"A": 1}, {"A": 1})),
        step("bwd", "dO_c H_c^T (matmul)", ({"X": 1, "P": 1}, {"X4": 1}), ({"X4": 1, "P": 1}, {"X4": 1})),
        step("bwd", "dp * key_scale: own pass", none, ({"A": 1, "W4": 1}, {"A": 1})),
        step(
            "bwd",
            "(dp w) K_c (matmul) [fused: + dO H^T, x 2^c, dq in dtype]",
            ({"A": 1, "W": 1, "X": 1, "X4": 1}, {"X": 1}),
            ({"A": 1, "X4": 1}, {"X4": 1}),
        ),
        step("bwd", "dq = sum of the two, x 2^c, to dtype", none, ({"X4": 2}, {"X": 1})),
        step("bwd", "Q_c^T dO_c (matmul)", ({"X": 2}, {"P": 1}), ({"X4": 2}, {"P": 1})),
        step(
            "bwd",
            "G_c = dS_T + reverse exclusive cumsum of Q^T dO",
            ({"P": 1, "S": 1}, {"P": 1}),
            ({"P": 2, "S": 1}, {"P": 2}),
        ),
        step("bwd", "V_c G_c^T (matmul)", ({"X": 1, "P": 1}, {"X4": 1}), ({"X4": 1, "P": 1}, {"X4": 1})),
        step(
            "bwd",
            "dp^T Q_c (matmul) [fused: + V G^T, x 2^c = dK~ f32]",
            ({"A": 1, "X": 1, "X4": 1}, {"X4": 1}),
            ({"A": 1, "X4": 1}, {"X4": 1}),
        ),
        step("bwd", "dK~ = sum of the two, x 2^c (float32)", none, ({"X4": 2}, {"X4": 1})),
        step("bwd", "scores Q_c K_c^T (matmul), mask", ({"X": 2}, {"A": 1}), ({"X4": 2}, {"A": 1})),
        step("bwd", "mask of the scores: own pass", none, ({"A": 1}, {"A": 1})),
        step("bwd", "K_c G_c (matmul)", ({"X": 1, "P": 1}, {"X4": 1}), ({"X4": 1, "P": 1}, {"X4": 1})),
        step(
            "bwd",
            "scores^T dO_c (matmul) [fused: + K G, x w, dv in dtype]",
            ({"A": 1, "X": 1, "X4": 1, "W": 1}, {"X": 1}),
            ({"A": 1, "X4": 1}, {"X4": 1}),
        ),
        step("bwd", "dv = (sum of the two) * w, to dtype", none, ({"X4": 2, "W4": 1}, {"X": 1})),
        step(
            "bwd",
            "dk = w dK~ and d key_scale = <dK~, k> [fused: one pass]",
            ({"X4": 1, "W": 1, "X": 1}, {"X": 1, "W": 1}),
            ({"X4": 1, "W4": 1}, {"X": 1}),
        ),
        step("bwd", "d key_scale = <dK~, k>: own pass", none, ({"X4": 2}, {"W": 1})),
        step("bwd", "dS0 = G_0 + (Q^T dO)_0", ({"S": 2}, {"S": 1}), ({"S": 2}, {"S": 1})),
    ]


def kernel_terms(shape: Shape, chunk: int) -> list[Term]:
    """HBM traffic of the planned Pallas TPU kernel (issue 23's design): the wrapper's copies and
    the three pallas_calls. A BlockSpec block is fetched again only when its block index changes
    between consecutive grid steps, so a block whose index ignores the head-dim block axis is read
    once per head-dim block (nb times); the running state stays in VMEM scratch."""
    nb = _ceil_to(shape.head_dim, LANES) // LANES
    padded = _ceil_to(shape.seq, chunk) != shape.seq or nb * LANES != shape.head_dim
    pad_states = nb * LANES != shape.head_dim
    terms = [
        Term("fwd", "wrapper: key_scale (B,T,H) -> (B,H,Tp,1) float32", {"W": 1}, {"Wp": 1}),
        # forward call, grid (B, H, Dv/BV, NC), BV = 128
        Term("fwd", "call: q chunks (C, Dk), once per d_v block", {"Xp": nb}, {}),
        Term("fwd", "call: k chunks (C, Dk), once per d_v block", {"Xp": nb}, {}),
        Term("fwd", "call: v chunks (C, BV)", {"Xp": 1}, {}),
        Term("fwd", "call: key_scale (C, 1) f32, once per d_v block", {"Wp": nb}, {}),
        Term("fwd", "call: S0 block (Dk, BV) at the first chunk", {"Sp": 1}, {}),
        Term("fwd", "call: out (C, BV) in dtype", {}, {"Xp": 1}),
        Term("fwd", "call: S_T block (Dk, BV) at the last chunk", {}, {"Sp": 1}),
        Term("bwd", "wrapper: key_scale (B,T,H) -> (B,H,Tp,1) again", {"W": 1}, {"Wp": 1}),
        # dQ call, grid (B, H, Dk/BK, NC), BK = 128, forward sweep
        Term("bwd", "dQ call: k chunks (C, BK)", {"Xp": 1}, {}),
        Term("bwd", "dQ call: v chunks (C, Dv), once per d_k block", {"Xp": nb}, {}),
        Term("bwd", "dQ call: key_scale (C, 1), once per d_k block", {"Wp": nb}, {}),
        Term("bwd", "dQ call: dO chunks (C, Dv), once per d_k block", {"Xp": nb}, {}),
        Term("bwd", "dQ call: S0 block (BK, Dv)", {"Sp": 1}, {}),
        Term("bwd", "dQ call: dq (C, BK) in dtype", {}, {"Xp": 1}),
        # dK/dV call, grid (B, H, NC), reverse sweep
        Term("bwd", "dKdV call: q, k, v, dO chunks", {"Xp": 4}, {}),
        Term("bwd", "dKdV call: key_scale (C, 1)", {"Wp": 1}, {}),
        Term("bwd", "dKdV call: dS_T at the start", {"Sp": 1}, {}),
        Term("bwd", "dKdV call: dk, dv (C, D) in dtype (no GQA)", {}, {"Xp": 2}),
        Term("bwd", "dKdV call: d key_scale (C, 1) f32", {}, {"Wp": 1}),
        Term("bwd", "dKdV call: dS0 (Dk, Dv) f32", {}, {"Sp": 1}),
        Term("bwd", "wrapper: d key_scale (B,H,Tp,1) -> (B,T,H)", {"Wp": 1}, {"W": 1}),
    ]
    if padded:  # copies the wrapper makes when T % C or D % 128 is not zero (none at the default shape)
        terms += [
            Term("fwd", "wrapper: pad q, k, v", {"X": 3}, {"Xp": 3}),
            Term("fwd", "wrapper: slice out back", {"Xp": 1}, {"X": 1}),
            Term("bwd", "wrapper: pad q, k, v, dO", {"X": 4}, {"Xp": 4}),
            Term("bwd", "wrapper: slice dq, dk, dv back", {"Xp": 3}, {"X": 3}),
        ]
    if pad_states:
        terms += [
            Term("fwd", "wrapper: pad S0, slice S_T", {"S": 1, "Sp": 1}, {"Sp": 1, "S": 1}),
            Term("bwd", "wrapper: pad S0, dS_T, slice dS0", {"S": 2, "Sp": 1}, {"Sp": 2, "S": 1}),
        ]
    return sorted(terms, key=lambda t: t.phase != "fwd")  # stable: the forward's terms first


def kernel_grid_steps(shape: Shape, chunk: int) -> dict[str, int]:
    """Grid steps of each pallas_call: forward and dQ B H nb NC, dK/dV B H NC."""
    nb = _ceil_to(shape.head_dim, LANES) // LANES
    nc = _ceil_to(shape.seq, chunk) // chunk
    bh = shape.batch * shape.heads
    return {"fwd": bh * nb * nc, "dQ": bh * nb * nc, "dKdV": bh * nc}


def key_scale_lane_padding(shape: Shape, chunk: int, phase: str | None = None) -> int:
    """Extra bytes (a risk, not in the totals) if the (B, H, Tp, 1) float32 key_scale is stored with
    its minor dim padded to 128 lanes (TPU's (8, 128) HBM tiling): 127 Wp more per access of it."""
    ks = kernel_symbols(shape, chunk)
    accesses = sum(
        t.read.get("Wp", 0) + t.written.get("Wp", 0) for t in kernel_terms(shape, chunk) if phase in (None, t.phase)
    )
    return accesses * (LANES - 1) * ks["Wp"]


# ----------------------------------------------------------------------------- FLOPs
# Nominal FLOPs (2 per multiply-add) of the matmuls; the full C x C block is computed (the causal
# mask does not skip its upper half) in both forms; elementwise work is left out.


def xla_forward_flops(shape: Shape, chunk: int) -> float:
    """2 B H Tx (Cx (Dk + Dv) + 2 Dk Dv): Q K~^T and scores V per chunk, K~^T V and Q H."""
    d, tx = shape.head_dim, _ceil_to(shape.seq, chunk)
    return 2.0 * shape.batch * shape.heads * tx * (chunk * 2 * d + 2 * d * d)


def xla_backward_flops(shape: Shape, chunk: int) -> float:
    """2 B H Tx (Cx (3 Dk + 2 Dv) + 5 Dk Dv): C x C products dO V^T, dp K, dp^T Q, Q K^T, scores^T dO;
    D x D products K~^T V (recomputed), dO H^T, Q^T dO, V G^T, K G. 2.5x the forward at Dk = Dv."""
    d, tx = shape.head_dim, _ceil_to(shape.seq, chunk)
    return 2.0 * shape.batch * shape.heads * tx * (chunk * 5 * d + 5 * d * d)


def kernel_forward_flops(shape: Shape, chunk: int) -> float:
    """2 B H Tp (C (nb Dk + Dv) + 2 Dk Dv): as the xla form at the kernel's chunk, with Q K~^T
    recomputed once per d_v block (nb blocks); padded rows and head dims are computed."""
    dp, tp = _ceil_to(shape.head_dim, LANES), _ceil_to(shape.seq, chunk)
    nb = dp // LANES
    return 2.0 * shape.batch * shape.heads * tp * (chunk * (nb + 1) * dp + 2 * dp * dp)


def kernel_backward_flops(shape: Shape, chunk: int) -> float:
    """2 B H Tp (C (3 Dk + (2 + nb) Dv) + 5 Dk Dv): the dQ call does K~^T V, dO H^T, dO V^T (once per
    d_k block) and dp K~; the dK/dV call does Q^T dO, V G^T, K G, dO V^T again, dp^T Q, Q K^T and
    scores^T dO. One C x C product (dO V^T) more than the xla form."""
    dp, tp = _ceil_to(shape.head_dim, LANES), _ceil_to(shape.seq, chunk)
    nb = dp // LANES
    return 2.0 * shape.batch * shape.heads * tp * (chunk * (3 + 2 + nb) * dp + 5 * dp * dp)


# ----------------------------------------------------------------------------- summary and table


def summary(shape: Shape, xla_chunk: int, chunk: int, chips=CHIPS) -> dict:
    """Bytes, FLOPs and roofline times of both forms, per mode ("fwd", "fwd+bwd")."""
    xs, ks = xla_symbols(shape, xla_chunk), kernel_symbols(shape, chunk)
    fused, unfused, kernel = xla_terms(True), xla_terms(False), kernel_terms(shape, chunk)
    # the kernel's dots: one bf16 pass for 2-byte inputs; for float32 inputs assume it keeps float32
    # accuracy (precision=HIGHEST, as the GPU kernels' float32 path does): 6 passes
    kernel_passes = 1 if shape.itemsize == 2 else HIGHEST_PASSES
    flops = {
        "xla": {
            "fwd": xla_forward_flops(shape, xla_chunk),
            "bwd": xla_backward_flops(shape, xla_chunk),
        },
        "kernel": {
            "fwd": kernel_forward_flops(shape, chunk),
            "bwd": kernel_backward_flops(shape, chunk),
        },
    }
    out = {"passes": {"xla": HIGHEST_PASSES, "kernel": kernel_passes}, "modes": {}}
    for mode, phases in (("fwd", ("fwd",)), ("fwd+bwd", ("fwd", "bwd"))):
        row = {
            "bytes": {
                "xla fused": sum(total_bytes(fused, xs, p) for p in phases),
                "xla unfused": sum(total_bytes(unfused, xs, p) for p in phases),
                "kernel": sum(total_bytes(kernel, ks, p) for p in phases),
            },
            "flops": {f: sum(flops[f][p] for p in phases) for f in flops},
        }
        passes = {"xla fused": HIGHEST_PASSES, "xla unfused": HIGHEST_PASSES, "kernel": kernel_passes}
        row["chips"] = {}
        for chip in chips:
            times = {}
            for form, nbytes in row["bytes"].items():
                mxu = row["flops"]["kernel" if form == "kernel" else "xla"] * passes[form]
                t_mem, t_mxu = nbytes / chip.bandwidth, mxu / chip.bf16_flops
                times[form] = {"memory": t_mem, "mxu": t_mxu, "roofline": max(t_mem, t_mxu)}
            row["chips"][chip.name] = times
        out["modes"][mode] = row
    return out


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f}"


def _formula(counts: dict) -> str:
    return " + ".join(f"{c}{k}" if c != 1 else k for k, c in counts.items()) or "0"


def _rw(term: Term) -> str:
    parts = [f"{rw} {_formula(c)}" for rw, c in (("r", term.read), ("w", term.written)) if c]
    return "; ".join(parts) or "–"


def _term_tables(xs: dict, ks: dict, shape: Shape, chunk: int) -> list[str]:
    lines = [
        "",
        "xla form, per step (r = read, w = written):",
        "",
        "| phase | step | fused | GB | unfused | GB |",
        "|---|---|---|---|---|---|",
    ]
    for f, u in zip(xla_terms(True), xla_terms(False), strict=True):
        fb = term_bytes(f.read, xs) + term_bytes(f.written, xs)
        ub = term_bytes(u.read, xs) + term_bytes(u.written, xs)
        lines.append(f"| {f.phase} | {f.name} | {_rw(f)} | {_gb(fb) if fb else '–'} | {_rw(u)} | {_gb(ub)} |")
    lines += ["", "Kernel, per term:", "", "| phase | term | bytes | GB |", "|---|---|---|---|"]
    for k in kernel_terms(shape, chunk):
        lines.append(f"| {k.phase} | {k.name} | {_rw(k)} | {_gb(term_bytes(k.read, ks) + term_bytes(k.written, ks))} |")
    return lines


def render(shape: Shape, xla_chunk: int, chunk: int, dtype: str, chips=CHIPS, terms: bool = True) -> str:
    """The Markdown tables: per-term bytes of each form (unless not `terms`), totals, times, FLOPs,
    intensity."""
    xs, ks = xla_symbols(shape, xla_chunk), kernel_symbols(shape, chunk)
    s = summary(shape, xla_chunk, chunk, chips)
    b, h, t, d = shape.batch, shape.heads, shape.seq, shape.head_dim
    lines = [
        f"MODEL, NOT MEASURED: B={b} H={h} (KV={h}) T={t} D={d} {dtype}; xla chunk Cx={xla_chunk}, "
        f"kernel chunk C={chunk}. GB = 1e9 bytes.",
        "",
        "Symbols (GB): " + ", ".join(f"{k} {_gb(v)}" for k, v in xs.items()) + " (xla);",
        "  " + ", ".join(f"{k} {_gb(v)}" for k, v in ks.items()) + " (kernel).",
    ]
    if terms:
        lines += _term_tables(xs, ks, shape, chunk)
    lines += [
        "",
        f"Totals and roofline times (MXU time: nominal FLOPs x bf16 passes / bf16 peak; xla "
        f"{s['passes']['xla']} passes (HIGHEST), kernel {s['passes']['kernel']}):",
        "",
        "| mode | quantity | xla fused | xla unfused | kernel | xla / kernel |",
        "|---|---|---|---|---|---|",
    ]
    for mode, row in s["modes"].items():
        by = row["bytes"]
        lines.append(
            f"| {mode} | HBM GB | {_gb(by['xla fused'])} | {_gb(by['xla unfused'])} | {_gb(by['kernel'])} | "
            f"{by['xla fused'] / by['kernel']:.1f}x – {by['xla unfused'] / by['kernel']:.1f}x |"
        )
        fl = row["flops"]
        lines.append(
            f"| {mode} | nominal GFLOP | {fl['xla'] / 1e9:.0f} | {fl['xla'] / 1e9:.0f} | {fl['kernel'] / 1e9:.0f} | "
            f"{fl['xla'] / fl['kernel']:.2f}x |"
        )
        intensity = {f: fl["kernel" if f == "kernel" else "xla"] / by[f] for f in by}
        lines.append(
            f"| {mode} | nominal FLOP/byte | {intensity['xla fused']:.0f} | {intensity['xla unfused']:.0f} | "
            f"{intensity['kernel']:.0f} | |"
        )
        for chip in chips:
            tm = row["chips"][chip.name]
            cell = {f: f"{1e3 * v['memory']:.2f} / {1e3 * v['mxu']:.2f}" for f, v in tm.items()}
            lines.append(
                f"| {mode} | {chip.name}: memory / MXU ms | {cell['xla fused']} | {cell['xla unfused']} | "
                f"{cell['kernel']} | |"
            )
            bound = {f: "memory" if v["memory"] >= v["mxu"] else "MXU" for f, v in tm.items()}
            lines.append(
                f"| {mode} | {chip.name}: roofline ms (bound) | {1e3 * tm['xla fused']['roofline']:.2f} "
                f"({bound['xla fused']}) | {1e3 * tm['xla unfused']['roofline']:.2f} ({bound['xla unfused']}) | "
                f"{1e3 * tm['kernel']['roofline']:.2f} ({bound['kernel']}) | "
                f"{tm['xla fused']['roofline'] / tm['kernel']['roofline']:.1f}x – "
                f"{tm['xla unfused']['roofline'] / tm['kernel']['roofline']:.1f}x |"
            )
    lines += ["", "Ridge points (vendor peaks): " + "; ".join(f"{c.name} {c.ridge:.0f} FLOP/byte" for c in chips) + "."]
    for mode, row in s["modes"].items():
        ratios = ", ".join(
            f"{c.name} {row['chips'][c.name]['kernel']['mxu'] / row['chips'][c.name]['kernel']['memory']:.2f}"
            for c in chips
        )
        lines.append(
            f"Kernel {mode}: MXU time / memory time, both at peak = {ratios} (the kernel stays memory-bound "
            "only while the MXU sustains at least that fraction of its peak; above 1 it is MXU-bound outright)."
        )
    steps = kernel_grid_steps(shape, chunk)
    fwd_bytes = s["modes"]["fwd"]["bytes"]["kernel"]
    per_step = fwd_bytes / steps["fwd"]
    lines.append(
        "Kernel grid steps: " + ", ".join(f"{k} {v}" for k, v in steps.items()) + f"; the forward moves "
        f"{per_step / 1e3:.0f} KB per step = "
        + ", ".join(f"{1e6 * per_step / c.bandwidth:.2f} us at {c.name}'s bandwidth" for c in chips)
        + " (a fixed per-step cost is not modelled)."
    )
    risk = {m: key_scale_lane_padding(shape, chunk, None if m == "fwd+bwd" else "fwd") for m in s["modes"]}
    lines.append(
        "Risk, not in the totals: if the (B, H, Tp, 1) float32 key_scale is stored with its minor dim padded "
        "to 128 lanes, the kernel moves "
        + ", ".join(f"{_gb(v)} GB more in {m}" for m, v in risk.items())
        + " (127 Wp per access)."
    )
    return "\n".join(lines)


def _xla_default_chunk() -> int:
    from pallas_kernels.cosine_attn import xla  # noqa: PLC0415  (imports jax: only when needed)

    return xla.DEFAULT_CHUNK


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=16, help="query heads = kv heads (no GQA)")
    p.add_argument("--seq", type=int, default=16384)
    p.add_argument("--head-dim", type=int, default=128, help="Dk = Dv")
    p.add_argument("--chunk", type=int, default=KERNEL_CHUNK, help="the kernel's chunk C (128 on v5e / v5p)")
    p.add_argument("--xla-chunk", type=int, default=None, help="the xla form's chunk (default xla.DEFAULT_CHUNK)")
    p.add_argument("--dtype", default="bfloat16", help=f"input dtype: {', '.join(ITEMSIZE)}")
    p.add_argument("--totals-only", action="store_true", help="leave out the per-term tables")
    args = p.parse_args(argv)
    sizes = {k: getattr(args, k) for k in ("batch", "heads", "seq", "head_dim", "chunk")}
    bad = [k for k, v in sizes.items() if v < 1] + (
        ["xla_chunk"] if args.xla_chunk is not None and args.xla_chunk < 1 else []
    )
    problem = (
        f"--{bad[0].replace('_', '-')} must be >= 1; got {sizes.get(bad[0], args.xla_chunk)}"
        if bad
        else f"--chunk must be a multiple of 8 (TPU sublanes); got {args.chunk}"
        if args.chunk % 8
        else f"--dtype must be one of {', '.join(ITEMSIZE)}; got {args.dtype!r}"
        if args.dtype not in ITEMSIZE
        else None
    )
    if problem:
        print(f"tpu_hbm_model: {problem}", file=sys.stderr)
        return 2
    xla_chunk = args.xla_chunk or _xla_default_chunk()
    shape = Shape(args.batch, args.heads, args.seq, args.head_dim, ITEMSIZE[args.dtype])
    print(render(shape, xla_chunk, args.chunk, args.dtype, terms=not args.totals_only))
    return 0


if __name__ == "__main__":
    sys.exit(main())
