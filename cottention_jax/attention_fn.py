"""Cosine attention where Flax expects softmax attention: masks, cross-attention, an `attention_fn`.

- `padding_from_mask`: the (query, key) padding that a Flax attention mask expresses. Cosine
  attention has no score matrix to mask, so it takes masks of the form
      mask[b, h, t, s] = query_real[b, t] & key_real[b, s]        (& s <= t for a causal layer)
  in any shape broadcastable to (batch, heads, q_len, kv_len), e.g. `nnx.make_attention_mask(
  query_real, key_real)`, or that combined with `nnx.make_causal_mask` for causal attention.
  A concrete mask of another form (a sliding window, a per-pair mask) is a ValueError; under jit
  the values cannot be read while tracing, and the mask is reduced as above without the check.
- `cosine_cross_attention`: bidirectional cosine attention of T queries over S keys (T != S
  allowed), with separate query and key padding; `o_t = q^_t (sum_s k^_s v_s^T) / max(n, 1)^p`,
  n the real keys of the row (so "value" and "query" stabilizing agree here).
- `cosine_attention_fn`: a function with the signature of `flax.nnx.dot_product_attention`, for
  modules that take `attention_fn=` (`nnx.MultiHeadAttention`, Linen's `MultiHeadDotProductAttention`):
      nnx.MultiHeadAttention(..., attention_fn=functools.partial(cosine_attention_fn, causal=True))
  Its stabilizer is a constant (`stabilizer=`, default 0.5, the paper's initial value): such
  modules hold no parameter for it. To learn it, use `CosineAttention`, a drop-in for the module.

Layout (batch..., seq, heads, head_dim), as Flax and `jax.nn.dot_product_attention`.
Dropout (`dropout_rate` > 0 and not `deterministic`): the linear form never forms attention
weights, so whole value vectors are dropped, per batch row, key position and kv head (shared by
every row and head with `broadcast_dropout`), and the kept ones scaled by 1 / (1 - rate): the
attention-weight dropout whose mask is the same for every query.
"""

from __future__ import annotations

from typing import cast

import jax
import jax.numpy as jnp
import numpy as np

from cottention_jax._cosine_local import STABILIZE_MODES, Implementation, Stabilize
from cottention_jax._util import HIGHEST as _HI
from cottention_jax.ops import cosine_attention
from pallas_kernels.cosine_attn.reference import count_scale, l2_normalize

__all__ = ["cosine_attention_fn", "cosine_cross_attention", "drop_values", "mask_as_bool", "padding_from_mask"]


def _traced(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def mask_as_bool(mask, batch: int, q_len: int, kv_len: int, *, name: str = "mask") -> jax.Array:
    """A Flax attention mask (True or nonzero = attend) as a bool (batch, heads | 1, q_len, kv_len) array."""
    shape = tuple(jnp.shape(mask))
    if len(shape) != 4 or shape[0] not in (1, batch) or shape[2] not in (1, q_len) or shape[3] not in (1, kv_len):
        raise ValueError(
            f"{name} must broadcast to (batch, heads, q_len, kv_len) = ({batch}, heads, {q_len}, "
            f"{kv_len}); got {name}.shape={shape}"
        )
    attend = jnp.asarray(mask)
    attend = attend if attend.dtype == jnp.bool_ else attend != 0
    return jnp.broadcast_to(attend, (batch, shape[1], q_len, kv_len))


def padding_from_mask(
    mask, batch: int, q_len: int, kv_len: int, *, causal: bool, name: str = "mask"
) -> tuple[jax.Array, jax.Array]:
    """(query_real (B, T) bool, key_real (B, S) bool) of a mask broadcastable to (B, heads, T, S).

    True (or nonzero) = attend. key_real[b, s]: some query of row b attends to key s;
    query_real[b, t]: query t attends to some key. See the module docstring for the masks taken.
    """
    real = mask_as_bool(mask, batch, q_len, kv_len, name=name)
    key_real, query_real = jnp.any(real, axis=(1, 2)), jnp.any(real, axis=(1, 3))
    if not _traced(mask):
        _check_reduces(np.asarray(real), np.asarray(query_real), np.asarray(key_real), causal, name)
    return query_real, key_real


def _check_reduces(real, query_real, key_real, causal: bool, name: str) -> None:
    padding = query_real[:, None, :, None] & key_real[:, None, None, :]
    t, s = real.shape[2:]
    tril = np.tri(t, s, dtype=bool)[None, None]
    if np.array_equal(real, padding) or (causal and np.array_equal(real, padding & tril)):
        if causal and t == s and not np.array_equal(query_real, key_real):
            raise ValueError(
                f"{name}: a causal layer masks one set of positions, but the mask's query padding "
                f"{query_real.astype(int).tolist()} and key padding {key_real.astype(int).tolist()} "
                "differ"
            )
        return
    if not causal and t == s and np.array_equal(real, padding & tril):
        raise ValueError(
            f"{name} is causal (it masks keys after each query): build the layer with causal=True "
            "(or pass causal=True to cosine_attention_fn)"
        )
    b, h, i, j = (int(x) for x in np.argwhere(real != (padding & tril if causal else padding))[0])
    raise ValueError(
        f"{name} must be key/query padding, mask[b, h, t, s] = query_real[b, t] & key_real[b, s]"
        f"{' & (s <= t)' if causal else ''}: cosine attention has no score matrix to mask pairs "
        f"in; got a mask that differs from that at (b, h, t, s) = ({b}, {h}, {i}, {j}) "
        f"({name}.shape={real.shape})"
    )


def drop_values(v: jax.Array, rate: float, key: jax.Array, *, broadcast: bool) -> jax.Array:
    """Value vectors (B, S, KV, Dv) dropped with probability `rate`, the kept ones scaled by 1/(1-rate):
    one draw per (row, position, kv head), or per position when `broadcast`."""
    shape = (1, v.shape[1], 1, 1) if broadcast else v.shape[:3] + (1,)
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, v / (1.0 - rate), 0).astype(v.dtype)


def _check_cross_inputs(q, k, v, stabilizer, query_mask, key_mask) -> None:
    for name, a in (("q", q), ("k", k), ("v", v)):
        if jnp.ndim(a) != 4:
            raise ValueError(
                f"{name} must have rank 4, (batch, seq, heads, head_dim); got {name}.shape={tuple(jnp.shape(a))}"
            )
    (b, t, h, dk), (bk, s, kvh, dkk), (bv, sv, kvv, _) = q.shape, k.shape, v.shape
    if not (b == bk == bv) or s != sv or dk != dkk or kvh != kvv or h % kvh:
        raise ValueError(
            "q (B, T, H, Dk), k (B, S, KV, Dk) and v (B, S, KV, Dv) must share the batch, k and v "
            f"the length and heads, q and k the head_dim, with H % KV == 0; got q.shape={q.shape}, "
            f"k.shape={k.shape}, v.shape={v.shape}"
        )
    if jnp.shape(stabilizer) != (h,):
        raise ValueError(
            f"stabilizer must have shape (heads,) = ({h},); got stabilizer.shape={tuple(jnp.shape(stabilizer))}"
        )
    for name, m, length in (("query_mask", query_mask, t), ("key_mask", key_mask, s)):
        if m is not None and (jnp.shape(m) != (b, length) or jnp.result_type(m) != jnp.bool_):
            raise ValueError(
                f"{name} must be a bool array of shape {(b, length)}; got {name}.shape="
                f"{tuple(jnp.shape(m))}, dtype {jnp.result_type(m)}"
            )


def cosine_cross_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    stabilizer: jax.Array,
    *,
    query_mask: jax.Array | None = None,
    key_mask: jax.Array | None = None,
) -> jax.Array:
    """Bidirectional cosine attention of q (B, T, H, Dk) over k (B, S, KV, Dk), v (B, S, KV, Dv).

    query_mask (B, T) / key_mask (B, S) bool, True = real: padded keys are ignored (and not
    counted in n), padded queries output exactly zero. Returns (B, T, H, Dv) in q's dtype;
    the state K^T V is accumulated in float32. Memory is linear in T + S.
    """
    _check_cross_inputs(q, k, v, stabilizer, query_mask, key_mask)
    b, t, h, dk = q.shape
    s, kvh = k.shape[1], k.shape[2]
    query_mask = jnp.ones((b, t), bool) if query_mask is None else query_mask
    key_mask = jnp.ones((b, s), bool) if key_mask is None else key_mask
    keys = key_mask[:, :, None, None]
    kn = jnp.where(keys, l2_normalize(k), 0)
    vz = jnp.where(keys, v.astype(jnp.float32), 0)
    kv = jnp.einsum("bskd,bske->bkde", kn, vz, precision=_HI)  # (B, KV, Dk, Dv)
    qn = jnp.where(query_mask[:, :, None, None], l2_normalize(q), 0).reshape(b, t, kvh, h // kvh, dk)
    out = jnp.einsum("btkgd,bkde->btkge", qn, kv, precision=_HI).reshape(b, t, h, -1)
    scale = count_scale(jnp.sum(key_mask, axis=1, dtype=jnp.int32), stabilizer)  # (B, H)
    return (out * scale[:, None, :, None]).astype(q.dtype)


def _last_query_over_cache(q, k, v, stabilizer, key_mask, stabilize: str):
    """Causal attention of one query (T = 1) over the real slots of a key/value cache (S slots, the
    unwritten ones masked out): the last row of causal cosine attention over those keys."""
    b, _, h, dk = q.shape
    s, kvh = k.shape[1], k.shape[2]
    counts = jnp.cumsum(key_mask.astype(jnp.int32), axis=1)  # n_i (B, S)
    keys = key_mask[:, :, None, None]
    kn = jnp.where(keys, l2_normalize(k), 0)
    vz = jnp.where(keys, v.astype(jnp.float32), 0)
    qn = l2_normalize(q)[:, 0].reshape(b, kvh, h // kvh, dk)
    scores = jnp.einsum("bkgd,bskd->bkgs", qn, kn, precision=_HI)  # (B, KV, G, S)
    if stabilize == "value":  # v_i / n_i^p
        scores = scores * count_scale(counts, stabilizer).reshape(b, s, kvh, h // kvh).transpose(0, 2, 3, 1)
    out = jnp.einsum("bkgs,bske->bkge", scores, vz, precision=_HI).reshape(b, 1, h, -1)
    if stabilize == "query":  # o / n_t^p
        out = out * count_scale(counts[:, -1], stabilizer)[:, None, :, None]
    return out.astype(q.dtype)


def cosine_attention_fn(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias=None,
    mask=None,
    broadcast_dropout: bool = True,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype=None,
    precision=None,
    module=None,
    is_causal: bool = False,
    *,
    causal: bool = False,
    stabilizer=0.5,
    stabilize: Stabilize = "value",
    implementation: Implementation | None = None,
) -> jax.Array:
    """Cosine attention with the call signature of `flax.nnx.dot_product_attention`.

    query (..., T, H, Dk), key (..., S, KV, Dk), value (..., S, KV, Dv) -> (..., T, H, Dv).
    mask: see `padding_from_mask`. causal (or Flax's is_causal): causal attention; T must equal S,
    or be 1 (one query over a key/value cache, as `nnx.MultiHeadAttention` decodes).
    stabilizer: the raw m, a float or (H,) array (a constant here). Dropout as the module
    docstring says. `bias` (no scores to add it to) and `module` (sow_weights: no weights to
    sow) are refused; `precision` is accepted and unused (the matmuls run at HIGHEST).
    """
    del precision
    if bias is not None:
        raise ValueError(
            "bias: cosine attention forms no attention logits to add a bias to; got a bias of "
            f"shape {tuple(jnp.shape(bias))}"
        )
    if module is not None:
        raise ValueError(
            "sow_weights: cosine attention never forms the attention weights, so there are none to "
            "sow; call without sow_weights=True"
        )
    if stabilize not in STABILIZE_MODES:  # checked here too: one query over a KV cache skips the op
        raise ValueError(f"stabilize must be one of {STABILIZE_MODES}; got {stabilize!r}")
    causal = bool(causal or is_causal)
    if dtype is not None:
        query, key, value = (x.astype(dtype) for x in (query, key, value))
    if jnp.ndim(query) < 3 or jnp.ndim(key) != jnp.ndim(query) or jnp.ndim(value) != jnp.ndim(query):
        raise ValueError(
            f"query, key and value must be (batch..., seq, heads, head_dim) of one rank; got "
            f"query.shape={jnp.shape(query)}, key.shape={jnp.shape(key)}, "
            f"value.shape={jnp.shape(value)}"
        )
    batch_shape = query.shape[:-3]
    b = int(np.prod(batch_shape, dtype=np.int64))
    q, k, v = (x.reshape((b,) + x.shape[-3:]) for x in (query, key, value))
    t, h, s = q.shape[1], q.shape[2], k.shape[1]
    stab = jnp.broadcast_to(jnp.asarray(stabilizer, jnp.float32), (h,))
    if dropout_rate > 0 and not deterministic:
        if dropout_rng is None:
            raise ValueError("dropout_rng is required when dropout_rate > 0 and deterministic=False")
        v = drop_values(v, dropout_rate, dropout_rng, broadcast=broadcast_dropout)
    query_real = key_real = None
    if mask is not None:
        if jnp.ndim(mask) != len(batch_shape) + 3:
            raise ValueError(
                f"mask must have shape (batch..., heads, q_len, kv_len), of rank "
                f"{len(batch_shape) + 3}; got mask.shape={tuple(jnp.shape(mask))}"
            )
        tail = tuple(jnp.shape(mask))[-3:]
        mask = jnp.broadcast_to(mask, batch_shape + tail).reshape((b,) + tail)
        query_real, key_real = padding_from_mask(mask, b, t, s, causal=causal)
    if causal and t == s:
        out = cast(
            jax.Array,
            cosine_attention(
                q,
                k,
                v,
                stab,
                causal=True,
                padding_mask=key_real,  # no state asked
                stabilize=stabilize,
                implementation=implementation,
            ),
        )
        out = out if query_real is None else jnp.where(query_real[:, :, None, None], out, 0)
    elif causal and t == 1:
        out = _last_query_over_cache(q, k, v, stab, jnp.ones((b, s), bool) if key_real is None else key_real, stabilize)
    elif causal:
        raise ValueError(
            f"causal attention needs as many queries as keys (or one query over a cache); got "
            f"query length {t} and key length {s}"
        )
    elif t == s and mask is None:
        out = cast(
            jax.Array,
            cosine_attention(
                q,
                k,
                v,
                stab,
                causal=False,
                stabilize=stabilize,  # no state asked
                implementation=implementation,
            ),
        )
    else:
        out = cosine_cross_attention(q, k, v, stab, query_mask=query_real, key_mask=key_real)
    return out.reshape(batch_shape + out.shape[1:])
