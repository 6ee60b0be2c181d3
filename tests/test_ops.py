"""cosine_attention: every form (reference, xla, RNN step scan) computes the spec.

The reference (`pallas_kernels/cosine_attn/reference.py`) is quadratic float32;
the xla path is the chunked scan with a hand-written backward; the step path
is `cosine_attention_step` scanned over positions. All three must agree on
outputs, final states and gradients for q, k, v and the stabilizer.
"""

import functools

import jax
import jax.numpy as jnp
import jax.test_util  # noqa: F401  (check_grads)
import numpy as np
import pytest

import cottention_jax as ca
from tests._util import fresh_key, padding_mask, random_qkv, rel_error

F32_TOL, BF16_TOL = 1e-5, 2e-2


def step_scan(q, k, v, m, *, mask=None, state=None, stabilize="value"):
    """Causal attention as T calls of cosine_attention_step under lax.scan."""
    b, t, h, dk = q.shape
    dv = v.shape[-1]
    state = ca.init_cosine_attention_state(b, h, dk, dv) if state is None else state
    mask = jnp.ones((b, t), bool) if mask is None else mask

    def body(s, xs):
        qt, kt, vt, mt = xs
        o, s = ca.cosine_attention_step(s, qt, kt, vt, m, padding_mask_t=mt, stabilize=stabilize)
        return s, o

    xs = (q.swapaxes(0, 1), k.swapaxes(0, 1), v.swapaxes(0, 1), mask.T)
    final, out = jax.lax.scan(body, state, xs)
    return out.swapaxes(0, 1), final


# Each case crosses the axes of the spec: (causal, padding, stabilize, heads, kv_heads, dk, dv, seq).
# 64 is the xla chunk size, so 64/128 are multiples of it and 1, 7, 100 are not.
CASES = [
    (True, "none", "value", 4, 4, 32, 32, 7),
    (True, "right", "value", 4, 2, 64, 48, 100),
    (True, "left", "value", 4, 1, 96, 96, 64),
    (True, "none", "query", 2, 2, 128, 64, 128),
    (True, "right", "query", 4, 2, 32, 16, 1),
    (True, "left", "query", 6, 3, 64, 64, 100),
    (False, "none", "value", 4, 4, 64, 32, 7),
    (False, "right", "value", 4, 2, 96, 64, 100),
    (False, "left", "query", 4, 1, 128, 128, 64),
    (False, "none", "query", 2, 1, 32, 48, 1),
]


def _case_id(c):
    causal, pad, stab, h, kv, dk, dv, t = c
    return f"{'causal' if causal else 'bidir'}-{pad}-{stab}-h{h}kv{kv}-dk{dk}dv{dv}-t{t}"


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_forms_agree_fp32(case):
    causal, pad, stab, h, kv, dk, dv, t = case
    b = 2
    q, k, v, m = random_qkv(fresh_key(), b, t, h, kv, dk, dv)
    mask = padding_mask(pad, b, t)
    kw = dict(causal=causal, padding_mask=mask, stabilize=stab)
    ref = ca.cosine_attention(q, k, v, m, implementation="reference", **kw)
    out = ca.cosine_attention(q, k, v, m, implementation="xla", **kw)
    assert out.dtype == jnp.float32 and out.shape == (b, t, h, dv)
    assert rel_error(out, ref) <= F32_TOL
    if mask is not None:  # padded positions give exactly zero
        assert jnp.all(jnp.where(mask[:, :, None, None], 0.0, out) == 0.0)
    if causal:
        steps, _ = step_scan(q, k, v, m, mask=mask, stabilize=stab)
        assert rel_error(steps, ref) <= F32_TOL


@pytest.mark.parametrize("case", CASES[::2] + CASES[1::4], ids=_case_id)
def test_gradients_agree_fp32(case):
    causal, pad, stab, h, kv, dk, dv, t = case
    b = 2
    q, k, v, m = random_qkv(fresh_key(), b, t, h, kv, dk, dv)
    mask = padding_mask(pad, b, t)
    # A fixed random cotangent makes every output element matter.
    ct = jax.random.normal(fresh_key(), (b, t, h, dv))

    def loss(impl):
        def f(q, k, v, m):
            return jnp.sum(
                ct
                * ca.cosine_attention(q, k, v, m, causal=causal, padding_mask=mask, stabilize=stab, implementation=impl)
            )

        return f

    grads = {impl: jax.grad(loss(impl), argnums=(0, 1, 2, 3))(q, k, v, m) for impl in ("reference", "xla")}
    if causal:

        def f_steps(q, k, v, m):
            return jnp.sum(ct * step_scan(q, k, v, m, mask=mask, stabilize=stab)[0])

        grads["steps"] = jax.grad(f_steps, argnums=(0, 1, 2, 3))(q, k, v, m)
    for impl in grads:
        for name, g, r in zip("qkvm", grads[impl], grads["reference"], strict=True):
            assert rel_error(g, r) <= F32_TOL, (impl, name)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_inputs(causal, dtype):
    """Half inputs: output in the input dtype, state float32, close to the float32 spec."""
    b, t, h, kv, dk, dv = 2, 100, 4, 2, 64, 32
    q, k, v, m = random_qkv(fresh_key(), b, t, h, kv, dk, dv, dtype=dtype)
    mask = padding_mask("right", b, t)
    kw = dict(causal=causal, padding_mask=mask)
    ref = ca.cosine_attention(
        q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), m, implementation="reference", **kw
    )
    if causal:
        out, state = ca.cosine_attention(q, k, v, m, implementation="xla", return_state=True, **kw)
        assert state.kv.dtype == jnp.float32 and state.count.dtype == jnp.int32
        steps, _ = step_scan(q, k, v, m, mask=mask)
        assert steps.dtype == dtype and rel_error(steps, ref) <= BF16_TOL
    else:
        out = ca.cosine_attention(q, k, v, m, implementation="xla", **kw)
    assert out.dtype == dtype
    assert rel_error(out, ref) <= BF16_TOL

    def f(q, k, v, m, impl):
        return jnp.sum(ca.cosine_attention(q, k, v, m, implementation=impl, **kw).astype(jnp.float32) ** 2)

    g_half = jax.grad(f, argnums=(0, 1, 2, 3))(q, k, v, m, "xla")
    g_ref = jax.grad(f, argnums=(0, 1, 2, 3))(*(x.astype(jnp.float32) for x in (q, k, v)), m, "reference")
    for name, g, r in zip("qkvm", g_half, g_ref, strict=True):
        assert g.dtype == (dtype if name != "m" else jnp.float32), name
        assert rel_error(g, r) <= 5 * BF16_TOL, name


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("stabilize", ["value", "query"])
@pytest.mark.parametrize("pad", ["none", "left", "right"])
def test_state_continuation(impl, stabilize, pad):
    """Running [0, T1) then [T1, T) from the returned state equals running [0, T)."""
    b, t, t1, h, kv, dk, dv = 2, 90, 37, 4, 2, 32, 24
    q, k, v, m = random_qkv(fresh_key(), b, t, h, kv, dk, dv)
    mask = padding_mask(pad, b, t)
    mask = jnp.ones((b, t), bool) if mask is None else mask
    kw = dict(causal=True, stabilize=stabilize, implementation=impl, return_state=True)
    full, s_full = ca.cosine_attention(q, k, v, m, padding_mask=mask, **kw)
    first, s1 = ca.cosine_attention(q[:, :t1], k[:, :t1], v[:, :t1], m, padding_mask=mask[:, :t1], **kw)
    second, s2 = ca.cosine_attention(
        q[:, t1:], k[:, t1:], v[:, t1:], m, padding_mask=mask[:, t1:], initial_state=s1, **kw
    )
    assert rel_error(jnp.concatenate([first, second], axis=1), full) <= F32_TOL
    assert rel_error(s2.kv, s_full.kv) <= F32_TOL
    np.testing.assert_array_equal(s2.count, s_full.count)
    np.testing.assert_array_equal(s_full.count, mask.sum(1))
    # The step path continues from the same state.
    steps, s3 = step_scan(q[:, t1:], k[:, t1:], v[:, t1:], m, mask=mask[:, t1:], state=s1, stabilize=stabilize)
    assert rel_error(steps, second) <= F32_TOL
    assert rel_error(s3.kv, s_full.kv) <= F32_TOL


def test_initial_state_gradient_matches_reference():
    b, t, h, kv, dk, dv = 2, 70, 2, 1, 32, 32
    q, k, v, m = random_qkv(fresh_key(), b, t, h, kv, dk, dv)
    s0 = ca.CosineAttentionState(jax.random.normal(fresh_key(), (b, h, dk, dv)), jnp.array([3, 11], jnp.int32))

    def f(kv0, q, impl):
        out, st = ca.cosine_attention(
            q,
            k,
            v,
            m,
            causal=True,
            implementation=impl,
            return_state=True,
            initial_state=ca.CosineAttentionState(kv0, s0.count),
        )
        return jnp.sum(jnp.sin(out)) + jnp.sum(st.kv**2) * 1e-3

    g_ref = jax.grad(f, argnums=(0, 1))(s0.kv, q, "reference")
    g_xla = jax.grad(f, argnums=(0, 1))(s0.kv, q, "xla")
    for g, r in zip(g_xla, g_ref, strict=True):
        assert rel_error(g, r) <= F32_TOL


@pytest.mark.parametrize("causal", [True, False])
def test_check_grads_numerically(causal):
    """Finite differences against the xla path's hand-written backward."""
    q, k, v, m = random_qkv(fresh_key(), 1, 9, 2, 1, 8, 4)
    mask = jnp.array([[False] + [True] * 8])

    def f(q, k, v, m):
        return ca.cosine_attention(q, k, v, m, causal=causal, padding_mask=mask, implementation="xla", chunk_size=4)

    jax.test_util.check_grads(f, (q, k, v, m), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)


def test_jit_vmap_and_grad_compose():
    b, t, h, kv, dk, dv = 2, 33, 2, 2, 16, 16
    q, k, v, m = random_qkv(fresh_key(), 3 * b, t, h, kv, dk, dv)
    stack = lambda x: x.reshape(3, b, *x.shape[1:])  # noqa: E731
    f = jax.jit(lambda q, k, v, m: ca.cosine_attention(q, k, v, m, causal=True))
    batched = jax.vmap(f, in_axes=(0, 0, 0, None))(stack(q), stack(k), stack(v), m)
    ref = ca.cosine_attention(q, k, v, m, causal=True, implementation="reference")
    assert rel_error(batched.reshape(ref.shape), ref) <= F32_TOL
    g = jax.jit(
        jax.grad(lambda m: jnp.sum(jax.vmap(f, in_axes=(0, 0, 0, None))(stack(q), stack(k), stack(v), m) ** 2))
    )(m)
    g_ref = jax.grad(lambda m: jnp.sum(ca.cosine_attention(q, k, v, m, causal=True, implementation="reference") ** 2))(
        m
    )
    assert rel_error(g, g_ref) <= F32_TOL


def test_stabilizer_scales_values_as_specified():
    """One head, all vectors aligned: o_t = sum_{i<=t} n_i^-p v_i exactly (value mode)."""
    t = 5
    q = jnp.ones((1, t, 1, 3))
    k = jnp.ones((1, t, 1, 3))
    v = jnp.arange(1.0, t + 1).reshape(1, t, 1, 1)
    m = jnp.array([0.3])
    p = jax.nn.sigmoid(0.3)
    n = np.arange(1, t + 1)
    expected_value = np.cumsum(np.arange(1, t + 1) * n**-p)
    expected_query = np.cumsum(np.arange(1, t + 1)) * n**-p
    for impl in ("reference", "xla"):
        o = ca.cosine_attention(q, k, v, m, causal=True, implementation=impl)
        np.testing.assert_allclose(o[0, :, 0, 0], expected_value, rtol=1e-6)
        o = ca.cosine_attention(q, k, v, m, causal=True, implementation=impl, stabilize="query")
        np.testing.assert_allclose(o[0, :, 0, 0], expected_query, rtol=1e-6)


# ----------------------------------------------------------------------------- robustness


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("causal", [True, False])
def test_zero_vectors_and_all_padding_rows_are_finite(impl, causal):
    b, t, h, dk = 2, 12, 2, 8
    q, k, v, m = random_qkv(fresh_key(), b, t, h, h, dk, dk)
    q = q.at[:, 3].set(0.0)
    k = k.at[:, 5].set(0.0)
    mask = jnp.array([[False] * t, [True] * t])  # row 0 is all padding

    def f(q, k, v, m):
        return ca.cosine_attention(q, k, v, m, causal=causal, padding_mask=mask, implementation=impl)

    out = f(q, k, v, m)
    assert jnp.all(jnp.isfinite(out))
    assert jnp.all(out[0] == 0.0)
    grads = jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2, 3))(q, k, v, m)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    assert jnp.all(grads[0][0] == 0.0)  # padded queries get no gradient


def test_long_sequence_through_the_rnn_step_is_finite():
    """100k positions through the step path: counts and scales stay finite."""
    t, h, d = 100_000, 2, 8
    q, k, v, m = random_qkv(fresh_key(), 1, t, h, h, d, d)
    out, state = jax.jit(step_scan)(q, k, v, m)
    assert int(state.count[0]) == t
    assert bool(jnp.all(jnp.isfinite(out))) and bool(jnp.all(jnp.isfinite(state.kv)))
    # The last output equals the parallel form's last output.
    last = ca.cosine_attention(q, k, v, m, causal=True, implementation="xla")[:, -1]
    assert rel_error(out[:, -1], last) <= 1e-4


@functools.partial(jax.jit, static_argnames=("impl",))
def _causal_form(q, k, v, m, mask, *, impl):
    return ca.cosine_attention(
        q, k, v, m, causal=True, padding_mask=mask, implementation=impl, interpret=impl == "pallas"
    )


_steps_form = jax.jit(lambda q, k, v, m, mask: step_scan(q, k, v, m, mask=mask)[0])


def _all_forms(q, k, v, m, padding_mask=None):
    """{form: output} for every form of causal attention: the spec, the chunked scan, the Pallas
    kernels (interpret mode) and the RNN step scanned over positions (jitted once per shape)."""
    forms = {impl: _causal_form(q, k, v, m, padding_mask, impl=impl) for impl in ("reference", "xla", "pallas")}
    return {**forms, "steps": _steps_form(q, k, v, m, padding_mask)}


@pytest.mark.parametrize("where", ["key", "value"])
@pytest.mark.parametrize("bad", [jnp.nan, jnp.inf])
def test_a_non_finite_key_or_value_reaches_only_later_positions_in_every_form(where, bad):
    """Causality holds for non-finite inputs too: a NaN key or value at position i (inside a 64-chunk,
    not at its start) changes nothing before i, in any form; from i on, the heads reading it are NaN."""
    b, t, h, kv, d = 2, 100, 4, 2, 16
    q, k, v, m = random_qkv(fresh_key(), b, t, h, kv, d, d)
    i = int(jax.random.randint(fresh_key(), (), 66, 90))
    if where == "key":
        k_bad, v_bad = k.at[0, i, 1, 3].set(bad), v  # row 0, kv head 1 = query heads 2, 3
    else:
        k_bad, v_bad = k, v.at[0, i, 1, 3].set(bad)
    clean = _causal_form(q, k, v, m, None, impl="reference")
    _, state = jax.jit(lambda *a: ca.cosine_attention(*a, causal=True, return_state=True))(q, k_bad, v_bad, m)
    assert bool(jnp.all(jnp.isnan(state.kv[0, 2:]))) and bool(jnp.all(jnp.isfinite(state.kv[0, :2])))
    for form, out in _all_forms(q, k_bad, v_bad, m).items():
        assert rel_error(out[0, :i], clean[0, :i]) <= F32_TOL, form  # before i: untouched
        assert rel_error(out[1], clean[1]) <= F32_TOL, form  # the other row: untouched
        assert rel_error(out[0, i:, :2], clean[0, i:, :2]) <= F32_TOL, form  # heads of kv head 0
        assert bool(jnp.all(jnp.isnan(out[0, i:, 2:]))), form


def test_bidirectional_a_non_finite_value_reaches_its_heads_real_outputs_only():
    b, t, h, d = 2, 30, 4, 8
    q, k, v, m = random_qkv(fresh_key(), b, t, h, 2, d, d)
    mask = padding_mask("right", b, t).at[:, :12].set(True).at[:, -1].set(False)
    v_bad = v.at[0, 10, 0, 0].set(jnp.nan)  # kv head 0 = query heads 0, 1
    clean = ca.cosine_attention(q, k, v, m, causal=False, padding_mask=mask, implementation="reference")
    for impl in ("reference", "xla"):
        out = ca.cosine_attention(q, k, v_bad, m, causal=False, padding_mask=mask, implementation=impl)
        real = mask[0]
        assert bool(jnp.all(jnp.isnan(out[0][real][:, :2]))) and bool(jnp.all(out[0][~real] == 0.0)), impl
        assert rel_error(out[0, :, 2:], clean[0, :, 2:]) <= F32_TOL and rel_error(out[1], clean[1]) <= F32_TOL


@pytest.mark.parametrize("causal", [True, False])
def test_nan_at_a_padded_position_never_leaks(causal):
    b, t, h, d = 2, 80, 2, 8
    q, k, v, m = random_qkv(fresh_key(), b, t, h, h, d, d)
    mask = padding_mask("right", b, t).at[:, 0].set(True).at[:, -1].set(False)
    dirty = [jnp.where(mask[:, :, None, None], x, jnp.nan) for x in (q, k, v)]
    clean = [jnp.where(mask[:, :, None, None], x, 0.0) for x in (q, k, v)]
    forms = (
        _all_forms(*dirty, m, padding_mask=mask)
        if causal
        else {
            impl: ca.cosine_attention(*dirty, m, causal=False, padding_mask=mask, implementation=impl)
            for impl in ("reference", "xla")
        }
    )
    expected = ca.cosine_attention(*clean, m, causal=causal, padding_mask=mask, implementation="reference")
    for form, out in forms.items():
        assert rel_error(out, expected) <= F32_TOL, form
        assert bool(jnp.all(jnp.where(mask[:, :, None, None], 0.0, out) == 0.0)), form


@pytest.mark.parametrize("scale", [1e19, 1e20, 1e30, 1e37])
def test_inputs_near_the_float32_range_are_normalised(scale):
    """|q|^2 of inputs ~1e19 overflows float32; the normalisation must not (cosine is scale-free)."""
    b, t, h, d = 1, 70, 2, 32
    q, k, v, m = random_qkv(fresh_key(), b, t, h, h, d, d)
    q, k = q / jnp.max(jnp.abs(q)), k / jnp.max(jnp.abs(k))  # so that scale * q stays finite
    expected = _causal_form(q, k, v, m, None, impl="reference")
    for form, out in _all_forms(q * scale, k * scale, v, m).items():
        assert rel_error(out, expected) <= F32_TOL, form
    if scale > 1e30:  # gradients ~1/s would be float32 denormals: nothing left to compare
        return
    # gradients: f(s q) has gradient (df/dq)(q) / s with respect to s q
    ct = jax.random.normal(fresh_key(), expected.shape)

    def loss(q, k, impl):
        return jnp.sum(ct * ca.cosine_attention(q, k, v, m, causal=True, implementation=impl))

    for impl in ("reference", "xla"):
        gq, gk = jax.grad(loss, argnums=(0, 1))(q * scale, k * scale, impl)
        rq, rk = jax.grad(loss, argnums=(0, 1))(q, k, "reference")
        assert rel_error(gq * scale, rq) <= 1e-4 and rel_error(gk * scale, rk) <= 1e-4, impl


def test_step_with_a_padded_row_keeps_its_state_even_for_nan_inputs():
    b, h, d = 3, 4, 8
    q, k, v, m = random_qkv(fresh_key(), b, 5, h, 2, d, d)
    _, state = jax.jit(lambda *a: ca.cosine_attention(*a, causal=True, return_state=True))(q, k, v, m)
    real = jnp.array([True, False, True])
    nan_row = lambda x: x[:, 0].at[1].set(jnp.nan)  # noqa: E731
    step = jax.jit(ca.cosine_attention_step)
    out, new = step(state, nan_row(q), nan_row(k), nan_row(v), m, padding_mask_t=real)
    np.testing.assert_array_equal(new.kv[1], state.kv[1])
    assert int(new.count[1]) == int(state.count[1]) and bool(jnp.all(out[1] == 0.0))
    full, full_state = step(state, q[:, 0], k[:, 0], v[:, 0], m, padding_mask_t=jnp.ones((3,), bool))
    assert rel_error(out[::2], full[::2]) <= F32_TOL and rel_error(new.kv[::2], full_state.kv[::2]) <= F32_TOL


# ----------------------------------------------------------------------------- bad input


def _inputs(b=2, t=5, h=4, kv=2, dk=8, dv=8):
    return random_qkv(fresh_key(), b, t, h, kv, dk, dv)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda q, k, v, m: (q[0], k, v, m), r"q must have rank 4.*q\.shape=\(5, 4, 8\)"),
        (lambda q, k, v, m: (q, k[:1], v, m), r"same batch size.*k\.shape=\(1, 5, 2, 8\)"),
        (lambda q, k, v, m: (q, k[:, :3], v[:, :3], m), r"same sequence length"),
        (
            lambda q, k, v, m: (q, k[:, :, :1].repeat(3, 2), v[:, :, :1].repeat(3, 2), m),
            r"heads of q \(4\) must be a multiple of kv heads.*\(3\)",
        ),
        (lambda q, k, v, m: (q, k[..., :4], v, m), r"q and k must have the same head_dim"),
        (lambda q, k, v, m: (q, k, v[:, :, :1], m), r"k and v must have the same number of heads"),
        (lambda q, k, v, m: (q, k, v, m[:3]), r"stabilizer must have shape \(heads,\) = \(4,\).*\(3,\)"),
        (lambda q, k, v, m: (q.astype(jnp.int32), k, v, m), r"q must be a floating-point array"),
        (lambda q, k, v, m: (q, k.astype(jnp.bfloat16), v, m), r"share a dtype"),
    ],
)
def test_bad_shapes_and_dtypes(mutate, match):
    args = mutate(*_inputs())
    with pytest.raises(ValueError, match=match):
        ca.cosine_attention(*args, causal=True)


def test_bad_options():
    q, k, v, m = _inputs()
    with pytest.raises(ValueError, match=r"padding_mask must have shape \(batch, seq\) = \(2, 5\)"):
        ca.cosine_attention(q, k, v, m, causal=True, padding_mask=jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"padding_mask must be a bool array.*int32"):
        ca.cosine_attention(q, k, v, m, causal=True, padding_mask=jnp.ones((2, 5), jnp.int32))
    with pytest.raises(ValueError, match=r"implementation must be one of .*'cuda'"):
        ca.cosine_attention(q, k, v, m, causal=True, implementation="cuda")
    if jax.default_backend() != "gpu":
        with pytest.raises(ValueError, match=r"implementation='pallas' needs a GPU.*interpret=True"):
            ca.cosine_attention(q, k, v, m, causal=True, implementation="pallas")
    with pytest.raises(ValueError, match=r"stabilize must be one of .*'key'"):
        ca.cosine_attention(q, k, v, m, causal=True, stabilize="key")
    state = ca.init_cosine_attention_state(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"initial_state is only defined for causal=True"):
        ca.cosine_attention(q, k, v, m, causal=False, initial_state=state)
    with pytest.raises(ValueError, match=r"return_state is only defined for causal=True"):
        ca.cosine_attention(q, k, v, m, causal=False, return_state=True)
    with pytest.raises(ValueError, match=r"initial_state\.kv must have shape.*\(2, 4, 8, 8\).*\(2, 2, 8, 8\)"):
        ca.cosine_attention(q, k, v, m, causal=True, initial_state=ca.init_cosine_attention_state(2, 2, 8, 8))
    with pytest.raises(ValueError, match=r"CosineAttentionState"):
        ca.cosine_attention(q, k, v, m, causal=True, initial_state=(state.kv, state.count))


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda q, k, v, m: ca.cosine_attention(q[:, :0], k[:, :0], v[:, :0], m, causal=True, implementation="xla"),
            r"q must have no empty axis.*q\.shape=\(2, 0, 4, 8\)",
        ),
        (
            lambda q, k, v, m: ca.cosine_attention(q[:, :0], k[:, :0], v[:, :0], m, causal=False, implementation="xla"),
            r"no empty axis",
        ),
        (
            lambda q, k, v, m: ca.cosine_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0], m[:0], causal=True),
            r"q must have no empty axis.*\(2, 5, 0, 8\)",
        ),
        (
            lambda q, k, v, m: ca.cosine_attention(q[:1, :, :, :0], k[:1, :, :, :0], v[:1], m, causal=True),
            r"no empty axis",
        ),
        (
            lambda q, k, v, m: ca.cosine_attention(np.asarray(q).tolist(), k, v, m, causal=True),
            r"q must be a jax or numpy array; got list",
        ),
        (
            lambda q, k, v, m: ca.cosine_attention(q, k, v, [0.5] * 4, causal=True),
            r"stabilizer must be a jax or numpy array; got list",
        ),
        (
            lambda q, k, v, m: ca.cosine_attention(q, k, v, m, causal=True, padding_mask=[[True] * 5] * 2),
            r"padding_mask must be a jax or numpy array",
        ),
        (lambda q, k, v, m: ca.cosine_attention(q, k, v, m, causal=1), r"causal must be a bool; got 1"),
        (lambda q, k, v, m: ca.cosine_attention(q, k, v, m, causal="yes"), r"causal must be a bool"),
        (
            lambda q, k, v, m: ca.cosine_attention(q, k, v, m, causal=True, chunk_size=0),
            r"chunk_size must be None \(the default, 64\) or an int >= 1; got 0",
        ),
        (lambda q, k, v, m: ca.cosine_attention(q, k, v, m, causal=True, chunk_size=-8), r"chunk_size .* got -8"),
        (lambda q, k, v, m: ca.cosine_attention(q, k, v, m, causal=True, chunk_size=2.5), r"chunk_size .* got 2\.5"),
        (lambda q, k, v, m: ca.cosine_attention(q, k, v, m, causal=True, chunk_size=True), r"chunk_size .* got True"),
        (
            lambda q, k, v, m: ca.cosine_attention(
                q, k, v, m, causal=True, implementation="pallas", interpret=True, chunk_size=24
            ),
            r"power of two >= 16; got 24",
        ),
        (
            lambda q, k, v, m: ca.cosine_attention_step(
                ca.init_cosine_attention_state(2, 4, 8, 8), q[:, 0], k[:, 0].astype(jnp.bfloat16), v[:, 0], m
            ),
            r"q_t, k_t and v_t must share a dtype; got float32, bfloat16, float32",
        ),
        (
            lambda q, k, v, m: ca.cosine_attention_step(
                ca.init_cosine_attention_state(2, 4, 8, 8), q[:, 0], k[:, 0], v[:, 0], m, padding_mask_t=[True, False]
            ),
            r"padding_mask_t must be a jax or numpy array",
        ),
    ],
)
def test_the_promised_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call(*_inputs())


def test_chunk_size_is_honoured_not_replaced_by_the_default():
    q, k, v, m = random_qkv(fresh_key(), 1, 40, 2, 2, 8, 8)
    ref = ca.cosine_attention(q, k, v, m, causal=True, implementation="reference")
    for chunk in (1, 24):
        assert (
            rel_error(ca.cosine_attention(q, k, v, m, causal=True, implementation="xla", chunk_size=chunk), ref)
            <= F32_TOL
        ), chunk


def test_step_bad_input():
    q, k, v, m = _inputs()
    state = ca.init_cosine_attention_state(2, 4, 8, 8)
    with pytest.raises(ValueError, match=r"q_t must have rank 3.*q_t\.shape=\(2, 5, 4, 8\)"):
        ca.cosine_attention_step(state, q, k[:, 0], v[:, 0], m)
    with pytest.raises(ValueError, match=r"state\.kv must have shape"):
        ca.cosine_attention_step(ca.init_cosine_attention_state(2, 4, 8, 4), q[:, 0], k[:, 0], v[:, 0], m)
    with pytest.raises(ValueError, match=r"padding_mask_t must be a bool array of shape \(batch,\)"):
        ca.cosine_attention_step(state, q[:, 0], k[:, 0], v[:, 0], m, padding_mask_t=jnp.ones((3,), bool))


# ----------------------------------------------------------------------------- public API


def test_public_api_is_pinned():
    """The one pin of the package's top-level names (DESIGN.md, example 10): a change here is deliberate."""
    assert sorted(ca.__all__) == sorted(
        [
            "CosineAttention",
            "CosineAttentionState",
            "IMPLEMENTATIONS",
            "SOFTMAX_IMPLEMENTATIONS",
            "STABILIZE_MODES",
            "SoftmaxAttention",
            "cosine_attention",
            "cosine_attention_fn",
            "cosine_attention_step",
            "default_implementation",
            "init_cosine_attention_state",
            "load_model",
            "load_tokenizer",
            "softmax_attention",
        ]
    )
    for name in ca.__all__:
        assert hasattr(ca, name), name
    import inspect

    params = inspect.signature(ca.cosine_attention).parameters
    assert list(params)[:4] == ["q", "k", "v", "stabilizer"]
    for name, default in [
        ("padding_mask", None),
        ("initial_state", None),
        ("return_state", False),
        ("stabilize", "value"),
        ("implementation", None),
    ]:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default == default
    assert params["causal"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["causal"].default is inspect.Parameter.empty
    assert ca.CosineAttentionState._fields == ("kv", "count")
    assert ca.IMPLEMENTATIONS == ("reference", "xla", "pallas")
    assert ca.default_implementation(causal=False) == "xla"


def test_the_docstring_examples_of_cosine_attention_run():
    """The `>>>` examples in cosine_attention's docstring are executed and their printed results checked."""
    import doctest  # noqa: PLC0415

    from cottention_jax import ops  # noqa: PLC0415

    finder = doctest.DocTestFinder()
    tests = [t for t in finder.find(ops) if t.name.endswith(".cosine_attention") and t.examples]
    assert tests, "cosine_attention's docstring has no examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_a_negative_count_in_a_state_is_refused():
    """A count is a number of real tokens: a negative one would give max(n, 1)^-p = 1 silently."""
    q, k, v, m = _inputs()
    kv0 = jax.random.normal(fresh_key(), (2, 4, 8, 8))
    bad = ca.CosineAttentionState(kv0, jnp.array([3, -1], jnp.int32))
    with pytest.raises(ValueError, match=r"initial_state\.count must be >= 0.*-1"):
        ca.cosine_attention(q, k, v, m, causal=True, initial_state=bad)
    with pytest.raises(ValueError, match=r"state\.count must be >= 0.*-1"):
        ca.cosine_attention_step(bad, q[:, 0], k[:, 0], v[:, 0], m)
    ok = ca.CosineAttentionState(kv0, jnp.array([3, 0], jnp.int32))  # zero is a valid count
    assert ca.cosine_attention(q, k, v, m, causal=True, initial_state=ok).shape == q.shape


# ----------------------------------------------------------------------------- the float32 range


def _spec_f64(q, k, v, m, causal, stabilize="value"):
    """The spec (DESIGN.md section 2) in float64 jnp, for outputs and gradients of inputs whose float32
    intermediates would overflow: run under `jax.enable_x64(True)`."""
    t, group = q.shape[1], q.shape[2] // k.shape[2]
    unit = lambda x: x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)  # noqa: E731
    qn, kn, v = unit(q), jnp.repeat(unit(k), group, axis=2), jnp.repeat(v, group, axis=2)
    n = jnp.arange(1, t + 1) if causal else jnp.full((t,), t)
    factor = (n[:, None].astype(jnp.float64) ** -jax.nn.sigmoid(m))[None, :, :, None]  # (1, T, H, 1)
    scores = jnp.einsum("bthd,bshd->bhts", qn, kn)
    if causal:
        scores = scores * jnp.tri(t)
    if stabilize == "value":
        return jnp.einsum("bhts,bshe->bthe", scores, v * factor)
    return jnp.einsum("bhts,bshe->bthe", scores, v) * factor


def _uniform(shape, magnitude, low=-1.0):
    return jax.random.uniform(fresh_key(), shape, jnp.float32, low, 1.0) * magnitude


# (|q| and |k| scale, |v| scale): the largest finite float32 is 3.4e38; 1e-36 is ~100 times its smallest normal
RANGE_CASES = {
    "huge-qkv": (3e38, 1e38),
    "huge-v": (1.0, 1e38),
    "huge-qk": (3e38, 1.0),
    "tiny-qk-huge-v": (1e-36, 1e38),
    "tiny-v": (1.0, 1e-36),
}


@pytest.mark.parametrize(
    "causal, stabilize, case",
    [(False, "value", c) for c in RANGE_CASES]
    + [(True, stabilize, c) for stabilize in ("value", "query") for c in RANGE_CASES if c != "tiny-qk-huge-v"],
)
def test_the_xla_forms_are_range_safe_against_float64(causal, stabilize, case):
    """Finite inputs anywhere in float32's range give the float64 spec's output and gradients whenever
    those are finite float32 numbers: nothing may overflow on the way (|q|^2, 1/|q|, sum_i k^_i v_i^T).
    Positive keys and values make the sums K^T V of the 1e38 cases ~6e38, past float32's range, while the
    stabilizer (p ~ 0.95, 24^-p ~ 0.05) brings the outputs back into it (causal: in "query" mode, which
    scales the sum, not its terms). Causal attention forms q^_t . k^_i first, as the spec does: keys and
    queries both below eps give products below float32's range there, so that case is bidirectional only."""
    qk_mag, v_mag = RANGE_CASES[case]
    b, t, h, kv, d = 2, 24, 4, 2, 8
    q, k, v = _uniform((b, t, h, d), qk_mag), _uniform((b, t, kv, d), qk_mag, 0.0), _uniform((b, t, kv, d), v_mag, 0.0)
    m = 3.0 + 0.1 * jax.random.normal(fresh_key(), (h,))
    ct = jax.random.normal(fresh_key(), (b, t, h, d))

    def f(q, k, v, m):
        return ca.cosine_attention(q, k, v, m, causal=causal, stabilize=stabilize, implementation="xla")

    out, vjp = jax.vjp(f, q, k, v, m)
    grads = vjp(ct)
    with jax.enable_x64(True):
        f64 = [jnp.asarray(np.asarray(x, np.float64)) for x in (q, k, v, m)]
        want, vjp64 = jax.vjp(lambda *a: _spec_f64(*a, causal=causal, stabilize=stabilize), *f64)
        want_grads = vjp64(jnp.asarray(np.asarray(ct, np.float64)))
        want, want_grads = np.asarray(want), [np.asarray(g) for g in want_grads]
    assert np.max(np.abs(want)) < 3e38, "the case must have a float32 answer"
    assert rel_error(out, want) <= 1e-5, case
    # A gradient is compared where it is a float32 number well above float32's smallest normal (1.2e-38;
    # CPUs and GPUs flush results below it to zero). For m, dL/dp = dL/dm / (p (1 - p)) must be one too:
    # every chain rule through p = sigmoid(m) forms it.
    p = np.asarray(jax.nn.sigmoid(m), np.float64)
    representable = {name: 1e-32 < np.max(np.abs(w)) < 3e38 for name, w in zip("qkvm", want_grads, strict=True)}
    representable["m"] &= bool(np.max(np.abs(want_grads[3] / (p * (1 - p)))) < 3e38)
    # Causal: dq and dm pass through the gradient with respect to q^ (times n_t^-p in "query" mode), which
    # leaves float32's range in the huge cases although dq itself does not; dv is checked there.
    for name, g, w in zip("qkvm", grads, want_grads, strict=True):
        if representable[name] and (name == "v" or not causal):
            assert rel_error(g, w) <= 1e-4, (case, name)


# ----------------------------------------------------------------------------- second witnesses of the spec
# Each property below also has a test above; these check it another way, from DESIGN.md section 2 directly.


def _unit64(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_a_larger_stabilizer_shrinks_every_output_by_n_to_the_minus_sigmoid_m(impl):
    """Bidirectional, where the factor is one number per row and head: o(m) = n^-sigmoid(m) q^ K^T V with
    n the real tokens of the row, so raising m by 1 multiplies every output by n^-(sigmoid(m + 1) - sigmoid(m))
    < 1 (n >= 2). Checked against that formula in float64, per row of a left-padded batch."""
    b, t, h, d = 3, 9, 2, 8
    q, k, v, m = random_qkv(fresh_key(), b, t, h, h, d, d)
    lengths = np.array([9, 5, 2])
    mask = jnp.asarray(np.arange(t)[None, :] >= (t - lengths)[:, None])  # left padding
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))  # noqa: E731
    outs = {}
    for shift in (0.0, 1.0):
        outs[shift] = np.asarray(
            ca.cosine_attention(q, k, v, m + shift, causal=False, padding_mask=mask, implementation=impl), np.float64
        )
    for row, n in enumerate(lengths):
        real = np.asarray(mask[row])
        qn, kn, vr = _unit64(q[row][real]), _unit64(k[row][real]), np.asarray(v[row][real], np.float64)
        raw = np.einsum("thd,shd,she->the", qn, kn, vr)  # q^_t sum_s k^_s v_s^T
        for shift, out in outs.items():
            want = raw * (float(n) ** -sigmoid(np.asarray(m) + shift))[None, :, None]
            np.testing.assert_allclose(out[row][real], want, rtol=1e-4, atol=1e-5)
            assert np.all(out[row][~real] == 0.0)
        shrink = np.abs(outs[1.0][row][real]) <= np.abs(outs[0.0][row][real]) + 1e-6
        assert shrink.all(), (row, n)


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("stabilize", ["value", "query"])
def test_counts_under_left_padding_count_real_tokens_only(impl, stabilize):
    """Causal with left padding: n_i counts the real tokens at positions <= i, so the j-th real token of
    a row sees the weights 1^-p .. j^-p whatever the padding before it (a count of positions would give
    (P + 1)^-p ..). Checked position by position against the sum written out in float64; the returned
    count is the number of real tokens."""
    b, t, h, d = 3, 10, 2, 4
    q, k, v, m = random_qkv(fresh_key(), b, t, h, h, d, d)
    pad = np.array([0, 3, 7])
    mask = jnp.asarray(np.arange(t)[None, :] >= pad[:, None])
    out, state = ca.cosine_attention(
        q, k, v, m, causal=True, padding_mask=mask, stabilize=stabilize, implementation=impl, return_state=True
    )
    np.testing.assert_array_equal(state.count, t - pad)
    p = 1.0 / (1.0 + np.exp(-np.asarray(m, np.float64)))  # (H,)
    qn, kn, vf = _unit64(q), _unit64(k), np.asarray(v, np.float64)
    for row in range(b):
        for pos in range(t):
            if pos < pad[row]:
                assert np.all(np.asarray(out[row, pos]) == 0.0)
                continue
            want = np.zeros((h, d))
            for i in range(pad[row], pos + 1):
                n_i = i - pad[row] + 1  # real tokens at <= i
                weight = n_i**-p if stabilize == "value" else np.ones(h)
                want += (np.sum(qn[row, pos] * kn[row, i], axis=-1) * weight)[:, None] * vf[row, i]
            if stabilize == "query":
                want *= ((pos - pad[row] + 1) ** -p)[:, None]
            np.testing.assert_allclose(
                np.asarray(out[row, pos], np.float64), want, rtol=1e-4, atol=1e-5, err_msg=f"row {row}, position {pos}"
            )


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("causal", [True, False])
def test_masked_keys_change_nothing_the_same_as_removing_them(impl, causal):
    """A padded position is as if it were not there: with holes anywhere in the mask (not only at an end)
    and large garbage at the padded positions, each real output equals the output of the op on the row
    with its padded positions cut out (the real tokens keep their order); padded outputs are zero."""
    b, t, h, kv, d = 2, 13, 4, 2, 8
    q, k, v, m = random_qkv(fresh_key(), b, t, h, kv, d, d)
    mask = jax.random.bernoulli(fresh_key(), 0.6, (b, t)).at[:, 4].set(True).at[:, 5].set(False)
    garbage = lambda x: jnp.where(mask[:, :, None, None], x, 1e4 * jax.random.normal(fresh_key(), x.shape))  # noqa: E731
    out = ca.cosine_attention(
        garbage(q), garbage(k), garbage(v), m, causal=causal, padding_mask=mask, implementation=impl
    )
    for row in range(b):
        real = np.asarray(mask[row])
        alone = ca.cosine_attention(
            q[row : row + 1, real],
            k[row : row + 1, real],
            v[row : row + 1, real],
            m,
            causal=causal,
            implementation=impl,
        )
        assert rel_error(out[row, real], alone[0]) <= F32_TOL, row
        assert bool(jnp.all(out[row, ~real] == 0.0)), row
