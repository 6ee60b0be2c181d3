"""cottention_jax.recurrent_softmax: softmax attention as an RNN, its ablations and baselines.

The truth here is written independently of the library: a float64 numpy loop over
query rows (`naive`), with the kernels and denominators spelled out as in the paper,
plus `jax.nn.dot_product_attention` for the softmax limit. The library's parallel,
recurrent (chunked scan) and step-by-step forms must all meet it, and agree on gradients.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cottention_jax.recurrent_softmax as rs
from cottention_jax.recurrent_softmax import AttentionVariant
from tests._util import fresh_key, padding_mask, random_qkv, rel_error

F32_TOL = 2e-5
# Forward checks call the op eagerly (its small primitives compile once and serve every
# case); gradient checks jit the whole grad (one program compiles faster than many ops).


# ----------------------------------------------------------------------------- independent truth


def _np_kernel(variant, qt, ks, scale):
    """kappa(q_t, k_i) for keys ks (n, D), float64, written from the definitions."""
    if variant.feature in ("taylor", "exp"):
        s = scale * ks @ qt
        if variant.clamp is not None:
            s = np.minimum(s, variant.clamp)
        if variant.feature == "exp":
            return np.exp(s)
        return sum(s**n / math.factorial(n) for n in range(variant.order + 1))
    phi = {
        "elu+1": lambda x: np.where(x > 0, x + 1.0, np.exp(np.minimum(x, 0))),
        "relu": lambda x: np.maximum(x, 0.0),
        "cosine": lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), variant.eps),
    }[variant.feature]
    return scale * phi(ks) @ phi(qt)


def _np_denominator(variant, num, den, n):
    eps = variant.eps
    how = variant.denominator
    if how in ("true", "detached"):
        return num / (den if abs(den) >= eps else math.copysign(eps, den if den != 0 else 1.0))
    if how == "none":
        return num
    if how == "position":
        return num / max(n, 1)
    if how == "l2":
        return num / max(np.linalg.norm(num), eps)
    if how == "rms":
        return num / np.sqrt(np.mean(num**2) + eps)
    centred = num - num.mean()  # layernorm
    return centred / np.sqrt(np.mean(centred**2) + eps)


def naive(variant, q, k, v, mask=None, gate=None):
    """o (B, T, H, Dv) float64: one query row at a time over its real keys i <= t."""
    q, k, v = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v))
    b, t, h, d = q.shape
    group = h // k.shape[2]
    mask = np.ones((b, t), bool) if mask is None else np.asarray(mask)
    scale = (
        variant.scale
        if variant.scale is not None
        else (1 / math.sqrt(d) if variant.feature in ("taylor", "exp") else 1.0)
    )
    out = np.zeros(q.shape[:3] + (v.shape[-1],))
    for bi in range(b):
        for ti in range(t):
            if not mask[bi, ti]:
                continue
            keys = [i for i in range(ti + 1) if mask[bi, i]]
            for hi in range(h):
                w = _np_kernel(variant, q[bi, ti, hi], k[bi, keys, hi // group], scale)
                o = _np_denominator(variant, w @ v[bi, keys, hi // group], w.sum(), len(keys))
                if gate is not None:
                    o = o / (1 + np.exp(-np.asarray(gate[bi, ti, hi], np.float64)))
                out[bi, ti, hi] = o
    return out


def jnp_numerator_denominator(variant, q, k, v):
    """A plain jnp kernel matrix (no padding), for gradient checks: num (B,T,H,Dv), den (B,T,H)."""
    group = q.shape[2] // k.shape[2]
    kr, vr = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", q, kr, precision="highest") / math.sqrt(q.shape[-1])
    w = sum(s**n / math.factorial(n) for n in range(variant.order + 1))
    w = w * jnp.tril(jnp.ones(s.shape[-2:]))
    return jnp.einsum("bhts,bshe->bthe", w, vr, precision="highest"), jnp.sum(w, -1).transpose(0, 2, 1)


def step_scan(variant, q, k, v, mask=None, gate=None, state=None):
    """T calls of attention_step under lax.scan: the model's decoding loop."""
    b, t, h, d = q.shape
    if state is None:
        state = rs.init_state(variant, b, k.shape[2], d, v.shape[-1])
    mask = jnp.ones((b, t), bool) if mask is None else mask
    gates = jnp.zeros((t,)) if gate is None else gate.swapaxes(0, 1)

    def body(s, xs):
        qt, kt, vt, mt, gt = xs
        o, s = rs.attention_step(variant, s, qt, kt, vt, padding_mask_t=mt, gate_t=None if gate is None else gt)
        return s, o

    xs = (q.swapaxes(0, 1), k.swapaxes(0, 1), v.swapaxes(0, 1), mask.T, gates)
    final, out = jax.lax.scan(body, state, xs)
    return out.swapaxes(0, 1), final


def _inputs(b=2, t=11, h=4, kv=2, d=4, dv=3, dtype=jnp.float32):
    q, k, v, _ = random_qkv(fresh_key(), b, t, h, kv, d, dv, dtype)
    return q, k, v


def _gate(variant, q, dv, per_head=False):
    if not variant.needs_gate:
        return None
    shape = q.shape[:3] + ((1,) if per_head else (dv,))
    return jax.random.normal(fresh_key(), shape)


# ----------------------------------------------------------------------------- the softmax limit


@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (3, 1)])
def test_large_order_taylor_matches_softmax(heads, kv_heads):
    """Order 24 with |s| <= 2.5: the truncation error is ~1e-15, so float32 agreement."""
    b, t, d = 2, 13, 8
    q, k, v = _inputs(b, t, heads, kv_heads, d, d)
    radius = math.sqrt(2.5 * math.sqrt(d))  # |q| = |k| = radius -> |s| <= 2.5
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True) * radius
    k = k / jnp.linalg.norm(k, axis=-1, keepdims=True) * radius
    expected = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    taylor = rs.attention(AttentionVariant(order=24), q, k, v)
    assert rel_error(taylor, expected) <= 1e-5
    assert rel_error(rs.attention("exp", q, k, v), expected) <= 1e-5
    low = rs.attention(AttentionVariant(order=2), q, k, v)  # a low order is visibly not softmax
    assert rel_error(low, expected) > 1e-3


def test_taylor_exp_series():
    s = jnp.linspace(-3.0, 3.0, 41)
    for order in (0, 1, 2, 5):
        expected = sum(np.asarray(s, np.float64) ** n / math.factorial(n) for n in range(order + 1))
        np.testing.assert_allclose(rs.taylor_exp(s, order), expected, rtol=1e-6, atol=1e-6)
    # order 30 is exp to float32 precision (rtol 1e-5: the alternating series cancels at s < 0)
    np.testing.assert_allclose(rs.taylor_exp(s, 30), np.exp(np.asarray(s)), rtol=1e-5)


def test_order_one_is_linear_attention():
    """N = 1: o_t = sum_i (1 + s_ti) v_i / sum_i (1 + s_ti), written as a plain RNN over t."""
    q, k, v = _inputs(b=2, t=9, h=2, kv=2, d=4, dv=3)
    qn, kn, vn = (np.asarray(x, np.float64) for x in (q, k, v))
    scale = 1 / math.sqrt(q.shape[-1])

    def phi(x):  # linear attention's feature map [1, sqrt(scale) x]: phi(q) . phi(k) = 1 + s
        return np.concatenate([np.ones(x.shape[:-1] + (1,)), math.sqrt(scale) * x], -1)

    expected = np.zeros(q.shape[:3] + (3,))
    s_state, z_state = np.zeros((2, 2, 5, 3)), np.zeros((2, 2, 5))
    for t in range(q.shape[1]):
        s_state += np.einsum("bhf,bhe->bhfe", phi(kn[:, t]), vn[:, t])
        z_state += phi(kn[:, t])
        num = np.einsum("bhf,bhfe->bhe", phi(qn[:, t]), s_state)
        expected[:, t] = num / np.einsum("bhf,bhf->bh", phi(qn[:, t]), z_state)[..., None]
    for form in ("parallel", "recurrent"):
        assert rel_error(rs.attention("taylor1", q, k, v, form=form, chunk_size=4), expected) <= F32_TOL


# ----------------------------------------------------------------------------- each variant vs the loop

VARIANT_CASES = [
    ("taylor1", "none"),
    ("taylor2", "right"),
    ("taylor3", "left"),
    ("taylor4", "none"),
    ("taylor2-none", "left"),
    ("taylor2-position", "right"),
    ("taylor2-l2norm", "left"),
    ("taylor2-rms", "right"),
    ("taylor2-layernorm", "left"),
    ("taylor2-detached", "right"),
    ("taylor2-gate", "left"),
    ("taylor2-detached-gate", "none"),
    ("exp", "right"),
    ("exp-none", "none"),
    ("exp-position", "left"),
    ("exp-l2norm", "right"),
    ("exp-rms", "none"),
    ("exp-layernorm", "left"),
    ("exp-detached", "none"),
    ("exp-gate", "right"),
    ("linear-elu", "left"),
    ("linear-relu", "right"),
    ("linear-cosine", "left"),
]

# The recurrent form differs from the parallel one in the kernel, not in the denominator
# (one `combine` serves both), so it is checked here for every kernel and one denominator;
# test_parallel_recurrent_step_agree covers more denominators and the gradients.
RECURRENT_TOO = {
    "taylor1",
    "taylor2",
    "taylor3",
    "taylor4",
    "taylor2-layernorm",
    "linear-elu",
    "linear-relu",
    "linear-cosine",
}


@pytest.mark.parametrize("name,pad", VARIANT_CASES, ids=[f"{n}-{p}" for n, p in VARIANT_CASES])
def test_variant_matches_naive_loop(name, pad):
    variant = rs.VARIANTS[name]
    q, k, v = _inputs()
    mask = padding_mask(pad, q.shape[0], q.shape[1])
    gate = _gate(variant, q, v.shape[-1], per_head=(pad == "left"))
    expected = naive(variant, q, k, v, mask, gate)
    forms = ("parallel", "recurrent") if name in RECURRENT_TOO else ("parallel",)
    for form in forms:
        out = rs.attention(name, q, k, v, padding_mask=mask, gate=gate, form=form, chunk_size=4)
        assert out.shape == expected.shape and out.dtype == jnp.float32
        assert rel_error(out, expected) <= F32_TOL, form
        if mask is not None:
            assert jnp.all(jnp.where(mask[:, :, None, None], 0.0, out) == 0.0)


@pytest.mark.parametrize("feature", ["relu", "elu+1", "cosine"])
def test_feature_maps_other_denominators_and_scale(feature):
    variant = AttentionVariant(feature=feature, order=None, denominator="none", scale=0.5)
    q, k, v = _inputs(t=7)
    expected = naive(variant, q, k, v)
    for form in ("parallel", "recurrent"):
        assert rel_error(rs.attention(variant, q, k, v, form=form, chunk_size=3), expected) <= F32_TOL


def test_clamp_before_series():
    """clamp c: s <- min(s, c) before the series (parallel form only).

    Order 2, whose kernel 1 + s + s^2/2 >= 1/2 keeps the denominator away from zero: with
    order 3 (negative below s = -1.6) and these scaled scores the denominator can nearly
    cancel, and float32 then misses the float64 truth by 1e-4 for a quarter of the seeds.
    """
    q, k, v = _inputs(d=8)
    q = 3 * q  # many scores above the clamp
    for variant in (AttentionVariant(order=2, clamp=1.0), AttentionVariant("exp", None, clamp=0.5)):
        out = rs.attention(variant, q, k, v)
        assert rel_error(out, naive(variant, q, k, v)) <= F32_TOL
        unclamped = rs.attention(dataclasses.replace(variant, clamp=None), q, k, v)
        assert rel_error(out, unclamped) > 1e-2  # the clamp did something


def test_detached_denominator_gradient():
    """detached: the value of "true", the gradient of num / den with den held constant."""
    q, k, v = _inputs(b=1, t=6, h=2, kv=1, d=4, dv=3)
    w = jax.random.normal(fresh_key(), (1, 6, 2, 3))
    taylor2 = rs.VARIANTS["taylor2"]
    den_const = np.asarray(jnp_numerator_denominator(taylor2, q, k, v)[1])  # outside autodiff

    def formula(q, k, v, detach):
        num, den = jnp_numerator_denominator(taylor2, q, k, v)
        return jnp.sum(num / (den_const if detach else den)[..., None] * w)

    def library(q, k, v, name):
        return jnp.sum(rs.attention(name, q, k, v) * w)

    def grads(fn, **kw):
        return jax.jit(jax.grad(functools.partial(fn, **kw), argnums=(0, 1, 2)))(q, k, v)

    detached, true = grads(library, name="taylor2-detached"), grads(library, name="taylor2")
    for got, want in zip(detached, grads(formula, detach=True), strict=True):
        assert rel_error(got, want) <= F32_TOL
    for got, want in zip(true, grads(formula, detach=False), strict=True):
        assert rel_error(got, want) <= F32_TOL
    assert rel_error(detached[0], true[0]) > 1e-3  # the two gradients differ


# ----------------------------------------------------------------------------- forms agree

FORM_CASES = [  # (variant, layout, padding, heads, kv_heads, seq, chunk)
    ("taylor1", "symmetric", "none", 4, 2, 10, 4),
    ("taylor2", "symmetric", "right", 4, 1, 11, 4),
    ("taylor2", "full", "left", 2, 2, 9, 3),
    ("taylor3", "symmetric", "left", 4, 2, 7, 2),
    ("taylor3", "full", "right", 2, 1, 6, 5),
    ("taylor2-gate", "symmetric", "left", 4, 2, 8, 3),
    ("taylor2-rms", "full", "right", 4, 2, 8, 64),
    ("linear-relu", "symmetric", "left", 4, 2, 9, 4),
]


def _case_variant(name, layout):
    return dataclasses.replace(rs.VARIANTS[name], state_layout=layout)


@pytest.mark.parametrize("case", FORM_CASES, ids=lambda c: "-".join(map(str, c)))
def test_parallel_recurrent_step_agree(case):
    """Outputs and gradients of parallel vs recurrent; outputs and final state of step-by-step decoding."""
    name, layout, pad, h, kv, t, chunk = case
    variant = _case_variant(name, layout)
    q, k, v = _inputs(b=2, t=t, h=h, kv=kv, d=3, dv=2)
    mask = padding_mask(pad, 2, t)
    gate = _gate(variant, q, 2)
    w = jax.random.normal(fresh_key(), q.shape[:3] + (2,))

    def loss(q, k, v, gate, form):
        out, state = rs.attention(
            variant, q, k, v, padding_mask=mask, gate=gate, form=form, chunk_size=chunk, return_state=True
        )
        return jnp.sum(out * w), (out, state)

    argnums = (0, 1, 2, 3) if gate is not None else (0, 1, 2)
    results = {
        form: jax.jit(jax.grad(functools.partial(loss, form=form), argnums=argnums, has_aux=True))(q, k, v, gate)
        for form in ("parallel", "recurrent")
    }
    (grads_p, (out_p, state_p)), (grads_r, (out_r, state_r)) = results["parallel"], results["recurrent"]
    # An odd-order series kernel (taylor1: 1 + s) can be negative, so a row's denominator can nearly
    # cancel: its output then leaves the hull of the values (seen: -388 with |v| <= 3) and float32
    # rounding in the two summation orders is amplified by the same factor. The bar scales with it.
    amplification = max(1.0, float(jnp.max(jnp.abs(out_p)) / jnp.max(jnp.abs(v))))
    assert rel_error(out_r, out_p) <= F32_TOL * amplification
    for g_r, g_p in zip(grads_r, grads_p, strict=True):
        assert rel_error(g_r, g_p) <= 5e-5 * amplification, amplification
    out_s, state_s = jax.jit(step_scan, static_argnums=0)(variant, q, k, v, mask, gate)
    assert rel_error(out_s, out_p) <= F32_TOL * amplification, amplification
    for final in (state_r, state_s):
        assert rel_error(final.numerator, state_p.numerator) <= F32_TOL
        assert rel_error(final.denominator, state_p.denominator) <= F32_TOL
        np.testing.assert_array_equal(final.count, state_p.count)


def test_states_are_the_papers_tensor_powers():
    """Full layout, order 2: state slices are sum_i k^{(x)n} v^T and sum_i k^{(x)n} over real tokens."""
    variant = AttentionVariant(order=2, state_layout="full")
    q, k, v = _inputs(b=2, t=8, h=2, kv=1, d=3, dv=2)
    mask = padding_mask("right", 2, 8)
    kn, vn, m = (np.asarray(x, np.float64) for x in (k[:, :, 0], v[:, :, 0], mask))
    powers = [np.ones(kn.shape[:2] + (1,)), kn, np.einsum("bti,btj->btij", kn, kn).reshape(2, 8, 9)]
    phi = np.concatenate(powers, -1) * m[..., None]  # (B, T, 1 + 3 + 9)
    for form in ("parallel", "recurrent"):
        _, state = rs.attention(variant, q, k, v, padding_mask=mask, form=form, return_state=True)
        assert state.numerator.shape == (2, 1, 13, 2) and state.numerator.dtype == jnp.float32
        assert rel_error(state.numerator[:, 0], np.einsum("btf,bte->bfe", phi, vn)) <= F32_TOL
        assert rel_error(state.denominator[:, 0], phi.sum(1)) <= F32_TOL
        np.testing.assert_array_equal(state.count, m.sum(1))


@pytest.mark.parametrize("name", ["taylor2", "taylor2-position", "linear-elu"])
def test_prefill_then_decode(name):
    """A prompt through the parallel form with return_state, then steps: the same as one pass."""
    variant = rs.VARIANTS[name]
    q, k, v = _inputs(b=2, t=10, h=4, kv=2, d=3, dv=2)
    mask = padding_mask("left", 2, 10)
    full = rs.attention(variant, q, k, v, padding_mask=mask)
    split = 6
    head, state = rs.attention(
        variant, q[:, :split], k[:, :split], v[:, :split], padding_mask=mask[:, :split], return_state=True
    )
    decode = jax.jit(step_scan, static_argnums=0)
    tail, _ = decode(variant, q[:, split:], k[:, split:], v[:, split:], mask[:, split:], state=state)
    assert rel_error(jnp.concatenate([head, tail], 1), full) <= F32_TOL
    # and a recurrent pass continued from the same state
    rest = rs.attention(
        variant,
        q[:, split:],
        k[:, split:],
        v[:, split:],
        padding_mask=mask[:, split:],
        initial_state=state,
        form="recurrent",
        chunk_size=3,
    )
    assert rel_error(rest, full[:, split:]) <= F32_TOL


def test_feature_dims():
    sym = AttentionVariant(order=3)
    full = AttentionVariant(order=3, state_layout="full")
    assert rs.feature_dim(sym, 64) == 1 + 64 + math.comb(65, 2) + math.comb(66, 3) == 47905
    assert rs.feature_dim(full, 64) == 1 + 64 + 64**2 + 64**3 == 266305
    assert rs.state_size(full, 64, 64) == 266305 * 65
    assert rs.feature_dim(rs.VARIANTS["linear-relu"], 16) == 16
    with pytest.raises(ValueError, match="exp"):
        rs.feature_dim(rs.VARIANTS["exp"], 16)


# ----------------------------------------------------------------------------- guards, zeros, dtypes


def test_odd_order_denominator_crossing_zero_is_guarded():
    """Order 1, scale 1: kernels 1 + s can be negative.

    den = 0 and |den| < eps are floored at +-eps (sign kept); a larger negative den is used as is.
    """
    variant = AttentionVariant(order=1, scale=1.0, eps=1e-3)
    k = jnp.asarray([[1.0, 0.0], [0.0, 1.0]])[None, :, None]  # (1, 2, 1, 2)
    v = jnp.asarray([[1.0, 2.0], [3.0, -1.0]])[None, :, None]

    def loss(q, k, v, form):
        out = rs.attention(variant, q, k, v, form=form)
        return jnp.sum(out), out

    for q2, den in (([-1.5, -0.5], 0.0), ([-2.0, -0.5], -0.5), ([-1.5, -0.5 - 1e-4], -1e-4)):
        q = jnp.asarray([[0.0, 0.0], q2])[None, :, None]
        s = np.asarray(q2)  # s_2i = q_2 . k_i = q2[i]
        num = (1 + s[0]) * np.asarray([1.0, 2.0]) + (1 + s[1]) * np.asarray([3.0, -1.0])
        guarded = den if abs(den) >= variant.eps else math.copysign(variant.eps, den if den else 1.0)
        for form in ("parallel", "recurrent"):
            grad = jax.grad(functools.partial(loss, form=form), argnums=(0, 1, 2), has_aux=True)
            grads, out = jax.jit(grad)(q, k, v)
            np.testing.assert_allclose(out[0, 1, 0], num / guarded, rtol=1e-4)
            assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    np.testing.assert_array_equal(
        rs.safe_denominator(jnp.asarray([0.0, 1e-9, -1e-9, -2.0, 3.0]), 1e-6),
        np.float32([1e-6, 1e-6, -1e-6, -2.0, 3.0]),
    )


# One variant per feature and per denominator, the odd orders, and both gated ones.
ZERO_CASES = [
    "taylor1",
    "taylor3",
    "taylor2-none",
    "taylor2-position",
    "taylor2-l2norm",
    "taylor2-rms",
    "taylor2-layernorm",
    "taylor2-detached-gate",
    "taylor2-gate",
    "exp",
    "linear-elu",
    "linear-relu",
    "linear-cosine",
]


@pytest.mark.parametrize("name", ZERO_CASES)
def test_zero_vectors_and_all_padding_rows_stay_finite(name):
    variant = rs.VARIANTS[name]
    q, k, v = _inputs(b=3, t=5, h=2, kv=1, d=3, dv=2)
    q = q.at[0].set(0.0)
    k = k.at[0].set(0.0)  # row 0: zero queries and keys
    v = v.at[1].set(0.0)  # row 1: zero values
    mask = jnp.ones((3, 5), bool).at[2].set(False)  # row 2: all padding
    gate = _gate(variant, q, 2)
    forms = ("parallel", "recurrent") if variant.supports_recurrent else ("parallel",)

    def loss(q, k, v, form):
        out = rs.attention(variant, q, k, v, padding_mask=mask, gate=gate, form=form)
        return jnp.sum(out**2), out

    for form in forms:
        grad = jax.grad(functools.partial(loss, form=form), argnums=(0, 1, 2), has_aux=True)
        grads, out = jax.jit(grad)(q, k, v)
        assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(out[2] == 0.0))
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads), form


@pytest.mark.parametrize("name", ["taylor2", "taylor2-l2norm", "linear-elu"])
def test_bf16_inputs_accumulate_in_float32(name):
    q, k, v = _inputs(b=2, t=40, h=2, kv=2, d=8, dv=8, dtype=jnp.bfloat16)
    expected = naive(rs.VARIANTS[name], q, k, v)  # float64 on the bf16 values
    for form in ("parallel", "recurrent"):
        out, state = rs.attention(name, q, k, v, form=form, chunk_size=16, return_state=True)
        assert out.dtype == jnp.bfloat16 and state.numerator.dtype == jnp.float32
        assert rel_error(out, expected) <= 8e-3  # bf16 output rounding only


# ----------------------------------------------------------------------------- registry and errors


def test_registry_and_gate_flags():
    for name, variant in rs.VARIANTS.items():
        assert rs.resolve_variant(name) is variant
        assert variant.needs_gate == ("gate" in name)
        assert variant.supports_recurrent == (variant.feature != "exp")
    assert {
        "taylor1",
        "taylor2",
        "taylor4",
        "taylor2-l2norm",
        "taylor2-none",
        "taylor2-position",
        "taylor2-rms",
        "taylor2-layernorm",
        "taylor2-detached",
        "taylor2-gate",
        "linear-elu",
        "linear-relu",
        "linear-cosine",
    } <= set(rs.VARIANTS)
    assert rs.VARIANTS["taylor2"].resolved_scale(16) == 0.25
    assert rs.VARIANTS["linear-elu"].resolved_scale(16) == 1.0


def test_every_exported_name_exists():
    assert all(hasattr(rs, name) for name in rs.__all__)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(feature="softmax"), "feature must be one of"),
        (dict(denominator="sum"), "denominator must be one of"),
        (dict(order=-1), "order must be an int >= 0"),
        (dict(order=2.0), "order must be an int >= 0"),
        (dict(feature="relu"), "order is only used by feature='taylor'"),
        (dict(feature="relu", order=None, clamp=5.0), "clamp applies to q.k"),
        (dict(scale=0.0), "scale must be a positive"),
        (dict(eps=0.0), "eps must be a positive"),
        (dict(state_layout="packed"), "state_layout must be one of"),
    ],
)
def test_bad_variants(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttentionVariant(**kwargs)


def test_bad_inputs_name_argument_and_shapes():
    q, k, v = _inputs(b=2, t=5, h=4, kv=2, d=3, dv=2)
    gate = jnp.zeros((2, 5, 4, 2))
    bad = [
        (lambda: rs.attention("taylor9", q, k, v), "variant must be"),
        (lambda: rs.attention("taylor2", q[0], k, v), r"q must have rank 4.*q.shape=\(5, 4, 3\)"),
        (lambda: rs.attention("taylor2", q, k[..., :2], v), r"same head_dim.*k.shape=\(2, 5, 2, 2\)"),
        (lambda: rs.attention("taylor2", q, k, v[:, :, :1]), r"same number of heads.*v.shape=\(2, 5, 1, 2\)"),
        (
            lambda: rs.attention("taylor2", q[:, :, :3], k, v),
            r"multiple of kv heads of k and v \(2\).*q.shape=\(2, 5, 3, 3\)",
        ),
        (lambda: rs.attention("taylor2", q, k[:, :4], v[:, :4]), r"same sequence length.*k.shape=\(2, 4, 2, 3\)"),
        (lambda: rs.attention("taylor2", q, k.astype(jnp.bfloat16), v), "share a dtype"),
        (lambda: rs.attention("taylor2", q.astype(jnp.int32), k, v), "q must be a floating-point"),
        (
            lambda: rs.attention("taylor2", q, k, v, padding_mask=jnp.ones((2, 4), bool)),
            r"padding_mask must be a bool array of shape \(2, 5\).*\(2, 4\)",
        ),
        (lambda: rs.attention("taylor2", q, k, v, padding_mask=jnp.ones((2, 5))), "padding_mask.*float32"),
        (lambda: rs.attention("taylor2-gate", q, k, v), "needs gate of shape"),
        (lambda: rs.attention("taylor2", q, k, v, gate=gate), "gate must be None"),
        (
            lambda: rs.attention("taylor2-gate", q, k, v, gate=gate[:, :, :2]),
            r"gate must have shape \(2, 5, 4, 2\).*gate.shape=\(2, 5, 2, 2\)",
        ),
        (lambda: rs.attention("exp", q, k, v, form="recurrent"), "form='recurrent' needs"),
        (lambda: rs.attention(AttentionVariant(clamp=5.0), q, k, v, form="recurrent"), "clamp=5.0"),
        (lambda: rs.attention("exp", q, k, v, return_state=True), "return_state needs"),
        (lambda: rs.attention("taylor2", q, k, v, form="scan"), "form must be one of"),
        (lambda: rs.attention("taylor2", q, k, v, form="recurrent", chunk_size=0), "chunk_size"),
        (
            lambda: rs.attention("taylor2", q, k, v, initial_state=rs.init_state("taylor2", 2, 4, 3, 2)),
            r"initial_state.numerator must have shape \(2, 2, 10, 2\).*\(2, 4, 10, 2\)",
        ),
        (lambda: rs.attention("taylor2", q, k, v, initial_state=(1, 2, 3)), "RecurrentSoftmaxState"),
        (lambda: rs.init_state("exp", 2, 2, 3, 2), "finite RNN state"),
    ]
    for call, match in bad:
        with pytest.raises(ValueError, match=match):
            call()


def test_bad_step_inputs():
    q, k, v = _inputs(b=2, t=1, h=4, kv=2, d=3, dv=2)
    q, k, v = q[:, 0], k[:, 0], v[:, 0]
    state = rs.init_state("taylor2", 2, 2, 3, 2)
    bad = [
        (lambda: rs.attention_step("taylor2", state, q[:, None], k, v), r"q_t must have rank 3"),
        (lambda: rs.attention_step("taylor2", state, q, k[:, :, :2], v), r"same head_dim.*k_t.shape=\(2, 2, 2\)"),
        (lambda: rs.attention_step("taylor2", state, q, k[:1], v), r"same batch size.*k_t.shape=\(1, 2, 3\)"),
        (lambda: rs.attention_step("taylor1", state, q, k, v), r"state.numerator must have shape \(2, 2, 4, 2\)"),
        (
            lambda: rs.attention_step("taylor2", state, q, k, v, padding_mask_t=jnp.ones((3,), bool)),
            r"padding_mask_t .*\(2,\).*\(3,\)",
        ),
        (lambda: rs.attention_step("taylor2-gate", state, q, k, v), "needs gate_t"),
        (lambda: rs.attention_step("exp", state, q, k, v), "finite RNN state"),
    ]
    for call, match in bad:
        with pytest.raises(ValueError, match=match):
            call()
