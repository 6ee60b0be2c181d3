"""Helpers for tests: relative errors and fresh random inputs."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

# the checkout the suite runs in (tests/ lies directly below it, at any depth of test file)
REPO_ROOT = Path(__file__).resolve().parents[1]

_counter = itertools.count()


def fresh_key() -> jax.Array:
    """A new PRNG key for every call; conftest.py reseeds the sequence per test from its name,
    so no two tests share inputs and each test's inputs do not depend on the test order."""
    return jax.random.PRNGKey(next(_counter))


def rel_error(actual, expected) -> float:
    """|actual - expected| / |expected| in the Frobenius norm, computed in float64."""
    a = np.asarray(jnp.asarray(actual, jnp.float32), np.float64)
    e = np.asarray(jnp.asarray(expected, jnp.float32), np.float64)
    assert a.shape == e.shape, (a.shape, e.shape)
    assert np.all(np.isfinite(a)), "non-finite values in result"
    return float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30))


def random_qkv(key, b, t, h, kv, dk, dv, dtype=jnp.float32):
    """q (B,T,H,Dk), k (B,T,KV,Dk), v (B,T,KV,Dv) ~ N(0, 1), and a stabilizer (H,) ~ N(0.5, 1)."""
    kq, kk, kvv, km = jax.random.split(key, 4)
    q = jax.random.normal(kq, (b, t, h, dk), jnp.float32).astype(dtype)
    k = jax.random.normal(kk, (b, t, kv, dk), jnp.float32).astype(dtype)
    v = jax.random.normal(kvv, (b, t, kv, dv), jnp.float32).astype(dtype)
    m = 0.5 + jax.random.normal(km, (h,), jnp.float32)
    return q, k, v, m


def padding_mask(kind: str, b: int, t: int, key=None):
    """(B, T) bool: 'none' (all real), 'right' or 'left' padding with random lengths >= 1."""
    if kind == "none":
        return None
    key = fresh_key() if key is None else key
    lengths = jax.random.randint(key, (b,), 1, t + 1)
    pos = jnp.arange(t)[None, :]
    if kind == "right":
        return pos < lengths[:, None]
    if kind == "left":
        return pos >= (t - lengths)[:, None]
    raise ValueError(kind)


def export_for_h100(fn, *args):
    """jax.export of jit(fn) for platform cuda with an abstract H100 as the target device.

    This runs the Pallas -> Triton lowering (power-of-two shapes, dot operand types, supported
    ops) without a GPU; PTX compilation and execution still need one.
    """
    from jax.sharding import AbstractDevice, AbstractMesh, use_abstract_mesh  # noqa: PLC0415

    h100 = AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=132, platform="cuda")
    # Pallas/Triton calls have no export compatibility guarantee; this only checks the lowering.
    unchecked = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
    with warnings.catch_warnings(), use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=h100)):
        warnings.simplefilter("ignore", DeprecationWarning)  # the Triton backend's deprecation notice
        return jax.export.export(jax.jit(fn), platforms=["cuda"], disabled_checks=unchecked)(*args)


def stepwise_logits(model, tokens: jax.Array, prompt_len: int, max_length: int) -> jax.Array:
    """Prefill tokens[:, :prompt_len], then feed the true continuation one token at a time through
    the jitted decode step: the logits at positions prompt_len - 1 .. T - 2, (B, T - prompt_len, V),
    to compare with the parallel forward's logits[:, prompt_len - 1:T - 1]."""
    from cottention_jax import decoding  # noqa: PLC0415  (only the decoding tests need it)

    last = decoding.prefill(model, tokens[:, :prompt_len], max_length=max_length)
    step, cache = decoding.make_decode_step(model)
    stepped = [last]
    for t in range(prompt_len, tokens.shape[1] - 1):
        logits, cache = step(cache, tokens[:, t])
        stepped.append(logits)
    return jnp.stack(stepped, axis=1)


def core_vs_reference(fn, args, tol: float) -> dict:
    """Forward and VJP of a kernel core `fn(q, k, v, key_scale, S0) -> (out, S_T)` against the quadratic
    float32 reference on the same inputs and random cotangents; asserts dtypes and shapes and every
    relative error <= tol, and returns the errors."""
    from pallas_kernels.cosine_attn import reference  # noqa: PLC0415

    (out, final), vjp = jax.vjp(fn, *args)
    (out_ref, final_ref), vjp_ref = jax.vjp(jax.jit(reference.causal_linear_attention_reference), *args)
    cot = jax.random.normal(fresh_key(), out.shape).astype(out.dtype)
    cot_final = jax.random.normal(fresh_key(), final.shape)
    grads = vjp((cot, cot_final))
    grads_ref = vjp_ref((cot.astype(out_ref.dtype), cot_final))
    assert out.dtype == args[0].dtype and final.dtype == jnp.float32
    errors = {"out": rel_error(out, out_ref), "final": rel_error(final, final_ref)}
    for name, g, g_ref, x in zip(("dq", "dk", "dv", "d_key_scale", "d_s0"), grads, grads_ref, args, strict=True):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        errors[name] = rel_error(g, g_ref)
    assert max(errors.values()) <= tol, errors
    return errors


def core_specs(b: int, t: int, h: int, kv: int, d: int, dtype) -> tuple:
    """Abstract inputs of a kernel core for lowering tests: q (B,T,H,D), k and v (B,T,KV,D) in `dtype`,
    key_scale (B,T,H) and S0 (B,H,D,D) float32."""
    spec = jax.ShapeDtypeStruct
    return (
        spec((b, t, h, d), dtype),
        spec((b, t, kv, d), dtype),
        spec((b, t, kv, d), dtype),
        spec((b, t, h), jnp.float32),
        spec((b, h, d, d), jnp.float32),
    )
