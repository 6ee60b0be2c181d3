"""The public cosine attention op, and the one place that picks an implementation.

Layering, top-down: this module -> `parallel` (a sequence split over a mesh axis) -> `_cosine_local`
(the input checks, the state, the forms on one device and the RNN step, re-exported here).

Layout (as `jax.nn.dot_product_attention`): q (B, T, H, Dk), k (B, T, KV, Dk),
v (B, T, KV, Dv), H % KV == 0. The mathematics is in
`pallas_kernels/cosine_attn/reference.py`; faster forms compute

    causal:        o = core(q^, k^, v, key_scale, S0)   (chunked prefix scan)
    bidirectional: o = q^ (K^T V) * max(n, 1)^-p        (two matmuls)

after normalising q and k, zeroing padded positions and computing the counts,
where core is `causal_linear_attention` in the xla or pallas form and
key_scale = max(n_i, 1)^-p ("value" stabilizer) or 1 ("query" stabilizer,
whose factor multiplies the query rows q^_t instead: o_t is linear in q^_t).

Range: the normalisation (every form) and both xla forms work at exact power-of-two scales
(`reference.range_exponent`), so finite inputs up to float32's maximum give the spec's outputs
wherever those are float32 numbers: nothing squares |q|, takes 1 / |q|, or sums K^T V at the
inputs' own scale ("query" mode puts its factor n_t^-p on q^_t, so the unscaled sum is never an
output). Gradients likewise, except that the causal forms' dq and dm pass through the gradient
with respect to q^, which can leave float32's range (|v| ~ 1e38) while dq itself does not. The
quadratic reference and the Pallas kernels sum v at its own scale and overflow past 3.4e38.
"""

from __future__ import annotations

import jax

from cottention_jax import parallel
from cottention_jax._cosine_local import (
    IMPLEMENTATIONS,
    STABILIZE_MODES,
    CosineAttentionState,
    Implementation,
    Stabilize,
    cosine_attention_local,
    cosine_attention_step,
    default_implementation,
    init_cosine_attention_state,
)

__all__ = [
    "CosineAttentionState",
    "IMPLEMENTATIONS",
    "STABILIZE_MODES",
    "cosine_attention",
    "cosine_attention_step",
    "default_implementation",
    "init_cosine_attention_state",
]


def cosine_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    stabilizer: jax.Array,
    *,
    causal: bool,
    padding_mask: jax.Array | None = None,
    initial_state: CosineAttentionState | None = None,
    return_state: bool = False,
    stabilize: Stabilize = "value",
    implementation: Implementation | None = None,
    chunk_size: int | None = None,
    interpret: bool = False,
    sequence_axis: str | None = None,
) -> jax.Array | tuple[jax.Array, CosineAttentionState]:
    """Cosine attention (Cottention): cosine similarity instead of softmax.

    Args:
      q: (B, T, H, Dk) queries.  k: (B, T, KV, Dk) keys.  v: (B, T, KV, Dv) values.
        H % KV == 0 (grouped-query attention); one floating dtype for all three.
      stabilizer: (H,) raw per-head parameter m; values are scaled by
        max(n, 1) ** -sigmoid(m), n the number of real tokens so far.
      causal: causal (RNN) or bidirectional attention.
      padding_mask: optional (B, T) bool, True = real token. Padded positions
        are ignored and their output is exactly zero; left and right padding work.
      initial_state: causal only; a `CosineAttentionState` to continue from.
      return_state: causal only; also return the state after the last position.
      stabilize: "value" (scale v_i by n_i^-p, the paper's form) or "query"
        (scale output row t by n_t^-p).
      implementation: "reference" (quadratic float32 spec), "xla" (chunked
        prefix scan, linear memory) or "pallas" (the Pallas kernels: Triton on a
        GPU, Mosaic on a TPU); None picks "pallas" for causal attention on a GPU
        and "xla" otherwise (TPUs included, until a TPU measurement says otherwise).
        Bidirectional attention is two matmuls, q^ (K^T V), for xla and pallas.
      chunk_size: chunk length of the xla scan / the Pallas kernels: None (the default, 64)
        or an int >= 1, a power of two >= 16 for pallas; the reference ignores it.
      interpret: pallas only; run the kernels in Pallas interpret mode (CPU): the GPU
        kernels, or the TPU kernels (TPU interpret mode) when JAX's backend is a TPU.
      sequence_axis: the name of a mesh axis the sequence is split over. When the
        context mesh (`jax.set_mesh`) has this axis with more than one device, the
        sequence-parallel form runs (`cottention_jax.parallel`: each device attends
        over its shard and only d x d states cross devices); otherwise it is ignored.

    Returns:
      out (B, T, H, Dv) in the input dtype, or (out, CosineAttentionState)
      when return_state. States and accumulations are float32. A NaN or infinite key or
      value at a real position i reaches no output before i (causal; every form alike):
      from i on, the heads reading it output NaN (`pallas_kernels/cosine_attn/reference.py`).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from cottention_jax import cosine_attention, cosine_attention_step
      >>> q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 16, 4, 8))   # B=2, T=16, H=4, D=8
      >>> m = jnp.zeros(4)                                                   # one stabilizer per head
      >>> cosine_attention(q, k, v, m, causal=True).shape
      (2, 16, 4, 8)

      The causal form is an RNN: the state after 15 positions and one step give the 16th output.

      >>> _, state = cosine_attention(q[:, :15], k[:, :15], v[:, :15], m, causal=True, return_state=True)
      >>> o_16, _ = cosine_attention_step(state, q[:, 15], k[:, 15], v[:, 15], m)
      >>> full = cosine_attention(q, k, v, m, causal=True, implementation="reference")
      >>> bool(jnp.allclose(o_16, full[:, 15], atol=1e-5))
      True
    """
    if sequence_axis is not None and _sequence_is_split(sequence_axis):
        return parallel.sequence_parallel_cosine_attention(
            q,
            k,
            v,
            stabilizer,
            axis=sequence_axis,
            causal=causal,
            padding_mask=padding_mask,
            initial_state=initial_state,
            return_state=return_state,
            stabilize=stabilize,
            implementation=implementation,
            chunk_size=chunk_size,
            interpret=interpret,
        )
    return cosine_attention_local(
        q,
        k,
        v,
        stabilizer,
        causal=causal,
        padding_mask=padding_mask,
        initial_state=initial_state,
        return_state=return_state,
        stabilize=stabilize,
        implementation=implementation,
        chunk_size=chunk_size,
        interpret=interpret,
    )


def _sequence_is_split(axis: str | None) -> bool:
    """Whether the context mesh splits `axis` over more than one device."""
    if axis is None:
        return False
    mesh = jax.sharding.get_abstract_mesh()
    return not mesh.empty and axis in mesh.axis_names and dict(mesh.shape)[axis] > 1
