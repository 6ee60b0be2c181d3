"""The specification of cosine attention, in plain jnp and float32.

Everything else in the project is tested against this file, so it is written
to be obviously right rather than fast: quadratic in sequence length, float32
with HIGHEST matmul precision, grouped heads expanded with `jnp.repeat`.

Conventions (stated once for the package):
  q: (B, T, H, Dk)    k: (B, T, KV, Dk)    v: (B, T, KV, Dv)    H % KV == 0
  query head h reads kv head h // (H // KV).
  padding_mask: (B, T) bool, True = real token.
  stabilizer m: (H,) raw; the exponent is p = sigmoid(m).

Cosine attention (arXiv 2409.18747), per head:
  q^_t = q_t / max(|q_t|, eps),  k^_i = k_i / max(|k_i|, eps)
  padded positions have q, k, v set to zero (so their output is zero), whatever their values
  (a NaN there never leaks)
  n_i  = real tokens at positions <= i (causal) or in the row (bidirectional),
         plus the count carried in an initial state
  "value" stabilizer: o_t = sum_{i<=t} (q^_t . k^_i) v_i / max(n_i, 1)^p
  "query" stabilizer: o_t = (sum_{i<=t} (q^_t . k^_i) v_i) / max(n_t, 1)^p
  with an initial state (S0, c0): o_t also gets q^_t S0 (scaled by the query
  factor in "query" mode), and the counts start at c0.

Non-finite inputs keep causality: a NaN or infinite key or value at a real position i
reaches no output t < i (of its own row, through its own kv head). From i on, the outputs
of the heads that read it are NaN (causal), or all of the row's real outputs are
(bidirectional), and so is the final state of those heads. Written with `where`, never a
product with a 0/1 mask (0 * NaN is NaN): the scores are masked with `where`, and a
non-finite value row is replaced by zeros in the sums and marked NaN afterwards
(`nonfinite_rows`, `poison_reached`), since a matmul would spread it to every row.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from pallas_kernels.cosine_attn._util import HIGHEST as _HI

__all__ = [
    "EPS",
    "causal_linear_attention_reference",
    "cosine_attention_reference",
    "count_scale",
    "exponent",
    "l2_normalize",
    "nonfinite_rows",
    "poison_reached",
    "poison_state",
    "power_of_two",
    "range_exponent",
    "times_power_of_two",
]

EPS = 1e-6  # floor on |q| and |k|: a zero vector normalises to zero, not NaN


def exponent(x: jax.Array) -> jax.Array:
    """floor(log2 |x|) of float32 x (int32), read from the bits: exact, with no log and no division;
    -127 for 0 (and subnormals), 128 for infinities and NaN."""
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(x).astype(jnp.float32), jnp.int32)
    return ((bits >> 23) & 0xFF) - 127


def power_of_two(e: jax.Array) -> jax.Array:
    """2.0 ** e as float32, exactly, for int e in [-126, 127] (built from the bits)."""
    return jax.lax.bitcast_convert_type((e.astype(jnp.int32) + 127) << 23, jnp.float32)


def times_power_of_two(x: jax.Array, e: jax.Array) -> jax.Array:
    """x * 2^e for any int e, in at most two exact multiplications: the product overflows or underflows
    only where x * 2^e itself is out of float32's range."""
    e1 = jnp.clip(e, -126, 127)
    return x * power_of_two(e1) * power_of_two(jnp.clip(e - e1, -126, 127))


def range_exponent(x: jax.Array, axis, lowest: int = -126) -> jax.Array:
    """e (int32, `axis` kept as size-1 axes) with the largest finite |x| over `axis` in [2^e, 2^(e+1)),
    clipped to [lowest, 126]: x * 2^-e is exact and at most 2 (4 at the top of the range), so sums of
    it neither overflow nor fall below the normal range where x did not. Constant under differentiation."""
    biggest = jnp.max(jnp.where(jnp.isfinite(x), jnp.abs(x), 0.0), axis=axis, keepdims=True)
    return jnp.clip(exponent(biggest), lowest, 126)


def l2_normalize(x: jax.Array, eps: float = EPS) -> jax.Array:
    """x / max(|x|, eps) over the last axis, in float32.

    Computed as y / max(|y|, eps / s) with y = x / s, which is the same function of x for any
    constant s > 0; s = 2^e is the power of two with max_j |x_j| in [s, 2 s), at least 2^floor(log2 eps)
    (`range_exponent`), so that y = x / s is exact, |y|^2 <= 4 head_dim never overflows (|x|^2 would
    from |x| ~ 1e19) and nothing is a reciprocal of a large |x| (1 / 3e38 is below float32's normal
    range and flushes to zero on CPU and GPU). The gradient, dx = (d - x^ (x^ . d)) / |x| (d / eps
    below the floor), is computed the same way with d scaled to [1, 2) by its own power of two, so a
    cotangent near 1e38 does not overflow in x^ . d; at x = 0 it is d / eps, finite. A row with a NaN
    or an infinity normalises to NaN.
    """
    return _l2_normalize(x.astype(jnp.float32), eps)  # the cast's transpose gives x's dtype back


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _l2_normalize(x, eps):
    return _l2_fwd(x, eps)[0]


def _l2_fwd(x, eps):
    lowest = max(math.floor(math.log2(eps)), -126) if eps > 0 else -126
    e = range_exponent(x, axis=-1, lowest=lowest)  # s >= ~eps
    inv = jnp.where(jnp.all(jnp.isfinite(x), axis=-1, keepdims=True), power_of_two(-e), jnp.nan)
    y = x * inv  # max_j |y_j| in [1, 2) when |x| >= eps
    floor = (eps * inv) ** 2  # <= 1.1; may underflow to 0 when |y| >= 1
    norm2 = jnp.sum(y * y, axis=-1, keepdims=True)
    r = jnp.sqrt(jnp.maximum(norm2, floor))  # max(|x|, eps) / s
    n = y / r
    return n, (n, r, norm2 >= floor, e)


def _l2_bwd(eps, res, d):
    n, r, above, e = res
    d = d.astype(jnp.float32)
    e_d = range_exponent(d, axis=-1)
    g = d * power_of_two(-e_d)  # d / 2^e_d, max |g| in [1, 2)
    u = jnp.where(above, g - n * jnp.sum(n * g, axis=-1, keepdims=True), g) / r
    return (times_power_of_two(u, e_d - e),)  # u 2^e_d / 2^e


_l2_normalize.defvjp(_l2_fwd, _l2_bwd)


def nonfinite_rows(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """(B, T, heads) bool: real positions whose vector (the last axis of x (B, T, heads, D)) holds
    a NaN or an infinity."""
    bad = ~jnp.all(jnp.isfinite(x), axis=-1)
    return bad if mask is None else bad & mask[:, :, None]


def poison_reached(out: jax.Array, bad: jax.Array, *, causal: bool, mask: jax.Array | None = None) -> jax.Array:
    """out (B, T, H, Dv) with NaN wherever a non-finite value reaches: bad (B, T, KV) from
    `nonfinite_rows`; causal: rows t >= a bad position, else every row; real positions only."""
    group = out.shape[2] // bad.shape[2]
    if causal:
        reached = jnp.cumsum(bad.astype(jnp.int32), axis=1) > 0
    else:
        reached = jnp.broadcast_to(jnp.any(bad, axis=1, keepdims=True), bad.shape)
    reached = jnp.repeat(reached, group, axis=2)  # (B, T, H)
    if mask is not None:
        reached = reached & mask[:, :, None]
    return jnp.where(reached[..., None], jnp.nan, out)


def poison_state(kv: jax.Array, bad: jax.Array) -> jax.Array:
    """A state kv (B, H, Dk, Dv) with NaN for the heads whose kv head had a non-finite value."""
    group = kv.shape[1] // bad.shape[2]
    hit = jnp.repeat(jnp.any(bad, axis=1), group, axis=1)  # (B, H)
    return jnp.where(hit[:, :, None, None], jnp.nan, kv)


def count_scale(counts: jax.Array, stabilizer: jax.Array) -> jax.Array:
    """max(n, 1) ** -sigmoid(m): counts (...,) int -> (..., H) float32."""
    p = jax.nn.sigmoid(stabilizer.astype(jnp.float32))
    n = jnp.maximum(counts, 1).astype(jnp.float32)
    return jnp.exp(-jnp.log(n)[..., None] * p)


def cosine_attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    stabilizer: jax.Array,
    *,
    causal: bool,
    padding_mask: jax.Array | None = None,
    initial_state: tuple[jax.Array, jax.Array] | None = None,
    stabilize: str = "value",
) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Quadratic float32 cosine attention.

    Returns (out, state): out (B, T, H, Dv) float32; state = (kv, count) with
    kv (B, H, Dk, Dv) float32 and count (B,) int32 for causal, None otherwise.
    No input checking: `cottention_jax.cosine_attention` does that.
    """
    b, t, h, _ = q.shape
    group = h // k.shape[2]
    mask = jnp.ones((b, t), bool) if padding_mask is None else padding_mask
    keep = mask[:, :, None, None]  # where, not a product: NaN * 0 is NaN

    bad = nonfinite_rows(v, mask)  # (B, T, KV): marked NaN at the end
    qh = jnp.where(keep, l2_normalize(q), 0.0)  # (B, T, H, Dk)
    kh = jnp.repeat(jnp.where(keep, l2_normalize(k), 0.0), group, axis=2)  # (B, T, H, Dk)
    v_real = keep & ~bad[..., None]
    vf = jnp.repeat(jnp.where(v_real, v.astype(jnp.float32), 0.0), group, axis=2)  # (B, T, H, Dv)

    if initial_state is None:
        kv0 = jnp.zeros((b, h, q.shape[-1], v.shape[-1]), jnp.float32)
        count0 = jnp.zeros((b,), jnp.int32)
    else:
        kv0, count0 = initial_state
        kv0 = kv0.astype(jnp.float32)
        count0 = count0.astype(jnp.int32)

    if causal:
        counts = count0[:, None] + jnp.cumsum(mask.astype(jnp.int32), axis=1)  # (B, T)
    else:
        counts = jnp.broadcast_to(jnp.sum(mask, axis=1, dtype=jnp.int32)[:, None], (b, t))
    scale = count_scale(counts, stabilizer)  # (B, T, H)

    scores = jnp.einsum("bthd,bshd->bhts", qh, kh, precision=_HI)  # (B, H, T, T)
    if causal:  # a NaN key stays out of earlier rows
        scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, 0.0)

    if stabilize == "value":
        vs = vf * scale[..., None]  # v~_i = v_i n_i^-p
        out = jnp.einsum("bhts,bshe->bthe", scores, vs, precision=_HI)
        out = out + jnp.einsum("bthd,bhde->bthe", qh, kv0, precision=_HI)
        kv_new = jnp.einsum("bshd,bshe->bhde", kh, vs, precision=_HI)
    elif stabilize == "query":
        out = jnp.einsum("bhts,bshe->bthe", scores, vf, precision=_HI)
        out = out + jnp.einsum("bthd,bhde->bthe", qh, kv0, precision=_HI)
        out = out * scale[..., None]  # row factor n_t^-p
        kv_new = jnp.einsum("bshd,bshe->bhde", kh, vf, precision=_HI)
    else:
        raise ValueError(f"stabilize must be 'value' or 'query'; got {stabilize!r}")

    out = poison_reached(out, bad, causal=causal, mask=mask)
    if not causal:
        return out, None
    count = count0 + jnp.sum(mask, axis=1, dtype=jnp.int32)
    return out, (poison_state(kv0 + kv_new, bad), count)


def causal_linear_attention_reference(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_scale: jax.Array,
    initial_state: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """The core every chunked kernel computes, quadratic and float32.

    q (B, T, H, Dk), k (B, T, KV, Dk), v (B, T, KV, Dv), key_scale (B, T, H),
    initial_state S0 (B, H, Dk, Dv). With k~_{i,h} = key_scale_{i,h} k_{i,h//G}:
      o_t  = q_t (S0 + sum_{i<=t} k~_i v_i^T)      -> (B, T, H, Dv) float32
      S_T  = S0 + sum_i k~_i v_i^T                  -> (B, H, Dk, Dv) float32
    """
    t, h = q.shape[1], q.shape[2]
    group = h // k.shape[2]
    qf = q.astype(jnp.float32)
    kf = jnp.repeat(k.astype(jnp.float32), group, axis=2) * key_scale[..., None]
    vf = jnp.repeat(v.astype(jnp.float32), group, axis=2)
    s0 = initial_state.astype(jnp.float32)
    scores = jnp.einsum("bthd,bshd->bhts", qf, kf, precision=_HI)
    scores = jnp.where(jnp.tril(jnp.ones((t, t), bool)), scores, 0.0)
    out = jnp.einsum("bhts,bshe->bthe", scores, vf, precision=_HI)
    out = out + jnp.einsum("bthd,bhde->bthe", qf, s0, precision=_HI)
    final = s0 + jnp.einsum("bshd,bshe->bhde", kf, vf, precision=_HI)
    return out, final
