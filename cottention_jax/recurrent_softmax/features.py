"""Kernels kappa(q, k) and the feature maps that factor them, kappa = phi_q(q) . phi_k(k).

Taylor kernel of order N with s = scale * q.k:
    kappa = sum_{n=0..N} s^n / n! = sum_n (scale^n / n!) <q^{(x)n}, k^{(x)n}>
Factored with every weight on the query side, so the key features are the plain
tensor powers of the paper's states (S^n = sum_i k_i^{(x)n} v_i^T):
    phi_k(k) = [k^{(x)0}, k^{(x)1}, ..., k^{(x)N}]
    phi_q(q) = [w_0 q^{(x)0}, w_1 q^{(x)1}, ..., w_N q^{(x)N}],  w_n = scale^n / n!
Layout "full" stores all D^n entries of k^{(x)n}. Layout "symmetric" stores each
distinct monomial k_{i1} ... k_{in} (i1 <= ... <= in) once, C(D+n-1, n) of them, and
multiplies its query weight by the number of orderings, n! / prod_j c_j! (c_j the
repeat counts), so phi_q . phi_k is unchanged.

Linear-attention maps: phi_k = phi(k), phi_q = scale * phi(q) with phi one of
elu(x)+1, relu(x), x / max(|x|, eps).
All arrays here are float32.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from cottention_jax._util import HIGHEST as _HI
from cottention_jax.recurrent_softmax.variants import AttentionVariant
from pallas_kernels.cosine_attn.reference import l2_normalize

__all__ = ["feature_dim", "key_features", "pair_kernel", "query_features", "taylor_exp"]


def taylor_exp(s: jax.Array, order: int) -> jax.Array:
    """sum_{n=0..order} s^n / n!, by Horner: 1 + s (1 + s/2 (1 + s/3 (...)))."""
    acc = jnp.ones_like(s)
    for n in range(order, 0, -1):
        acc = 1.0 + acc * s / n
    return acc


@functools.cache
def _monomials(d: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct degree-n monomials of d variables: indices (M, n) and orderings (M,)."""
    rows = list(itertools.combinations_with_replacement(range(d), n))
    idx = np.asarray(rows, np.int32).reshape(len(rows), n)
    orderings = np.asarray(
        [math.factorial(n) / math.prod(math.factorial(r.count(i)) for i in set(r)) for r in rows], np.float64
    )
    return idx, orderings


def _tensor_power(x: jax.Array, n: int, layout: str) -> tuple[jax.Array, np.ndarray]:
    """x (..., D) -> (x^{(x)n} (..., M), orderings (M,)) in the given layout."""
    d = x.shape[-1]
    if layout == "symmetric":
        idx, orderings = _monomials(d, n)
        return jnp.prod(x[..., idx], axis=-1), orderings  # (..., M, n) -> (..., M)
    power = jnp.ones(x.shape[:-1] + (1,), x.dtype)
    for _ in range(n):  # outer product, flattened
        power = (power[..., :, None] * x[..., None, :]).reshape(x.shape[:-1] + (-1,))
    return power, np.ones((d**n,), np.float64)


def _order(variant: AttentionVariant) -> int:
    """The Taylor order N of a "taylor" variant (an int there: AttentionVariant checks it)."""
    assert variant.order is not None, f"feature={variant.feature!r} has no Taylor order"
    return variant.order


def feature_dim(variant: AttentionVariant, head_dim: int) -> int:
    """F, the length of phi(k): the state is (F, Dv) numerator + (F,) denominator per kv head.

    Taylor order N: sum_{n<=N} D^n ("full") or sum_{n<=N} C(D+n-1, n) ("symmetric");
    feature maps: D. E.g. D = 64, N = 3: 266305 full / 47905 symmetric.
    """
    if variant.feature == "taylor":
        if variant.state_layout == "full":
            return sum(head_dim**n for n in range(_order(variant) + 1))
        return sum(math.comb(head_dim + n - 1, n) for n in range(_order(variant) + 1))
    if variant.feature == "exp":
        raise ValueError("feature='exp' has no finite feature map (an infinite series); use the parallel form")
    return head_dim


def _linear_map(feature: str, x: jax.Array, eps: float) -> jax.Array:
    if feature == "elu+1":
        return jax.nn.elu(x) + 1.0
    if feature == "relu":
        return jax.nn.relu(x)
    return l2_normalize(x, eps)  # "cosine"


def key_features(variant: AttentionVariant, k: jax.Array) -> jax.Array:
    """phi_k: k (..., D) -> (..., F) float32."""
    k = k.astype(jnp.float32)
    if variant.feature != "taylor":
        return _linear_map(variant.feature, k, variant.eps)
    return jnp.concatenate([_tensor_power(k, n, variant.state_layout)[0] for n in range(_order(variant) + 1)], axis=-1)


def query_features(variant: AttentionVariant, q: jax.Array, scale: float) -> jax.Array:
    """phi_q: q (..., D) -> (..., F) float32, carrying every weight of the kernel."""
    q = q.astype(jnp.float32)
    if variant.feature != "taylor":
        return scale * _linear_map(variant.feature, q, variant.eps)
    parts = []
    for n in range(_order(variant) + 1):
        power, orderings = _tensor_power(q, n, variant.state_layout)
        weight = orderings * scale**n / math.factorial(n)
        parts.append(power * jnp.asarray(weight, jnp.float32))
    return jnp.concatenate(parts, axis=-1)


def pair_kernel(
    variant: AttentionVariant, q: jax.Array, k: jax.Array, spec: str, scale: float, keep: jax.Array
) -> jax.Array:
    """kappa(q, k) for every pair that `spec` (an einsum over the head_dim) forms.

    Entries where `keep` is False are exactly 0, and their scores are replaced by 0
    before the series or exp, so no inf or NaN reaches the gradient.
    """
    q = q.astype(jnp.float32)
    k = k.astype(jnp.float32)
    if variant.feature in ("taylor", "exp"):
        s = scale * jnp.einsum(spec, q, k, precision=_HI)
        s = jnp.where(keep, s, 0.0)
        if variant.clamp is not None:
            s = jnp.minimum(s, variant.clamp)
        kern = taylor_exp(s, _order(variant)) if variant.feature == "taylor" else jnp.exp(s)
    else:
        phi_q = _linear_map(variant.feature, q, variant.eps)
        phi_k = _linear_map(variant.feature, k, variant.eps)
        kern = scale * jnp.einsum(spec, phi_q, phi_k, precision=_HI)
    return jnp.where(keep, kern, 0.0)
