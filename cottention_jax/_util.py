"""Helpers the library's modules share: the float32 matmul precision and einsum (the kernel tier's,
`pallas_kernels.cosine_attn._util`), and the one check of q, k and v every attention entry point runs.

Errors are ValueErrors that name the argument and show the shapes or dtypes involved.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.cosine_attn._util import HIGHEST, ein

__all__ = ["HIGHEST", "check_float", "check_qkv", "ein", "shape_error"]

_LAYOUTS = {
    4: ("(batch, seq, heads, head_dim)", "batch, seq, heads and head_dim"),
    3: ("(batch, heads, head_dim)", "batch, heads and head_dim"),
}


def shape_error(msg: str, **arrays) -> ValueError:
    """`msg; got a.shape=(...), b.shape=(...)`."""
    got = ", ".join(f"{name}.shape={tuple(jnp.shape(a))}" for name, a in arrays.items())
    return ValueError(f"{msg}; got {got}")


def check_float(**arrays) -> None:
    for name, a in arrays.items():
        if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            raise ValueError(f"{name} must be a floating-point array; got {name}.dtype={jnp.result_type(a)}")


def check_qkv(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    rank: int = 4,
    names: tuple[str, str, str] = ("q", "k", "v"),
    same_value_dim: bool = False,
    nonempty: bool = False,
    seq_note: str = "",
) -> None:
    """q (B, [T,] H, D), k (B, [T,] KV, D), v (B, [T,] KV, Dv): `rank` 4 (a sequence) or 3 (one step).

    Checks, in this order: the rank; no empty axis (when `nonempty`); one floating dtype; the
    same batch (and sequence) size; the head_dim of q and k (and v, when `same_value_dim`); the
    heads of k and v; heads of q a multiple of kv heads (grouped-query attention).
    """
    nq, nk, nv = names
    layout, axes = _LAYOUTS[rank]
    for name, a in zip(names, (q, k, v), strict=True):
        if jnp.ndim(a) != rank:
            raise shape_error(f"{name} must have rank {rank}, {layout}", **{name: a})
    if nonempty:
        for name, a in zip(names, (q, k, v), strict=True):
            if 0 in a.shape:
                raise shape_error(f"{name} must have no empty axis ({axes} >= 1)", **{name: a})
    check_float(**{nq: q, nk: k, nv: v})
    if not (jnp.result_type(q) == jnp.result_type(k) == jnp.result_type(v)):
        raise ValueError(
            f"{nq}, {nk} and {nv} must share a dtype; got {jnp.result_type(q)}, "
            f"{jnp.result_type(k)}, {jnp.result_type(v)}"
        )
    qkv = {nq: q, nk: k, nv: v}
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise shape_error(f"{nq}, {nk} and {nv} must have the same batch size", **qkv)
    if rank == 4 and not (q.shape[1] == k.shape[1] == v.shape[1]):
        raise shape_error(f"{nq}, {nk} and {nv} must have the same sequence length{seq_note}", **qkv)
    if same_value_dim and not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        raise shape_error(f"{nq}, {nk} and {nv} must have the same head_dim", **qkv)
    if q.shape[-1] != k.shape[-1]:
        raise shape_error(f"{nq} and {nk} must have the same head_dim", **{nq: q, nk: k})
    if k.shape[-2] != v.shape[-2]:
        raise shape_error(f"{nk} and {nv} must have the same number of heads", **{nk: k, nv: v})
    if q.shape[-2] % k.shape[-2]:
        raise shape_error(
            f"heads of {nq} ({q.shape[-2]}) must be a multiple of kv heads of {nk} and {nv} ({k.shape[-2]})",
            **{nq: q, nk: k},
        )
