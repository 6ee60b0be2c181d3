"""CosineAttention / SoftmaxAttention layers against hand-composed references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cottention_jax as ca
from cottention_jax.layers import CosineAttention, SoftmaxAttention, apply_rope, positions_from_mask
from tests._util import fresh_key, padding_mask, rel_error

HI = jax.lax.Precision.HIGHEST


def _project(layer, x):
    """q, k, v from the layer's parameters, written out with einsum."""
    proj = lambda lin: jnp.einsum("btf,fhd->bthd", x, lin.kernel[...], precision=HI)  # noqa: E731
    return proj(layer.query), proj(layer.key), proj(layer.value)


def _out(layer, o):
    return jnp.einsum("bthd,hdf->btf", o, layer.out.kernel[...], precision=HI)


def _softmax_reference(q, k, v, mask, causal):
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    s = jnp.einsum("bthd,bshd->bhts", q, k, precision=HI) / np.sqrt(q.shape[-1])
    t = q.shape[1]
    allowed = jnp.ones((1, 1, t, t), bool)
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((t, t), bool))
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    s = jnp.where(allowed, s, -1e30)
    o = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(s, axis=-1), v, precision=HI)
    return o if mask is None else o * mask[:, :, None, None]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pad", ["none", "left", "right"])
def test_cosine_layer_is_projections_around_the_op(causal, pad):
    b, t, f = 2, 19, 32
    layer = CosineAttention(
        num_heads=4,
        in_features=f,
        num_kv_heads=2,
        causal=causal,
        use_bias=False,
        stabilizer_init=0.3,
        rngs=nnx.Rngs(int(jax.random.randint(fresh_key(), (), 0, 1e6))),
    )
    x = jax.random.normal(fresh_key(), (b, t, f))
    mask = padding_mask(pad, b, t)
    q, k, v = _project(layer, x)
    o = ca.cosine_attention(
        q, k, v, layer.stabilizer[...], causal=causal, padding_mask=mask, implementation="reference"
    )
    assert rel_error(layer(x, padding_mask=mask), _out(layer, o)) <= 1e-5


@pytest.mark.parametrize("causal", [True, False])
def test_softmax_layer_matches_written_out_softmax(causal):
    b, t, f = 2, 17, 32
    layer = SoftmaxAttention(
        num_heads=4, in_features=f, num_kv_heads=1, causal=causal, use_bias=False, rngs=nnx.Rngs(3)
    )
    x = jax.random.normal(fresh_key(), (b, t, f))
    mask = padding_mask("right", b, t)
    q, k, v = _project(layer, x)
    expected = _out(layer, _softmax_reference(q, k, v, mask, causal))
    assert rel_error(layer(x, padding_mask=mask), expected) <= 1e-5


@pytest.mark.parametrize("implementation", [None, "xla", "pallas"])
@pytest.mark.parametrize("causal,pad", [(True, "left"), (False, "right"), (True, "none")])
def test_softmax_layer_implementations_match_the_dense_softmax(implementation, causal, pad):
    """Each implementation switch of the layer (pallas in interpret mode) vs the written-out softmax."""
    b, t, f = 2, 21, 64
    layer = SoftmaxAttention(
        num_heads=4,
        in_features=f,
        num_kv_heads=2,
        causal=causal,
        use_bias=False,
        implementation=implementation,
        interpret=True,
        rngs=nnx.Rngs(int(jax.random.randint(fresh_key(), (), 0, 1e6))),
    )
    assert layer.implementation == implementation
    x = jax.random.normal(fresh_key(), (b, t, f))
    mask = padding_mask(pad, b, t)
    q, k, v = _project(layer, x)
    out = layer(x, padding_mask=mask)
    assert rel_error(out, _out(layer, _softmax_reference(q, k, v, mask, causal))) <= 1e-5
    grad = jax.grad(lambda x: jnp.sum(layer(x, padding_mask=mask) ** 2))(x)
    grad_ref = jax.grad(lambda x: jnp.sum(_out(layer, _softmax_reference(*_project(layer, x), mask, causal)) ** 2))(x)
    assert rel_error(grad, grad_ref) <= 1e-5


def test_softmax_layer_rejects_an_unknown_implementation():
    with pytest.raises(ValueError, match=r"implementation must be one of \('xla', 'cudnn', 'pallas'\).*'reference'"):
        SoftmaxAttention(num_heads=2, in_features=8, implementation="reference", rngs=nnx.Rngs(0))


def test_cosine_layer_passes_interpret_to_the_pallas_kernels():
    b, t, f = 2, 32, 32
    layer = CosineAttention(
        num_heads=2,
        in_features=f,
        causal=True,
        use_bias=False,
        implementation="pallas",
        interpret=True,
        rngs=nnx.Rngs(int(jax.random.randint(fresh_key(), (), 0, 1e6))),
    )
    x = jax.random.normal(fresh_key(), (b, t, f))
    mask = padding_mask("left", b, t)
    q, k, v = _project(layer, x)
    o = ca.cosine_attention(q, k, v, layer.stabilizer[...], causal=True, padding_mask=mask, implementation="reference")
    assert rel_error(layer(x, padding_mask=mask), _out(layer, o)) <= 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("implementation", [None, "cudnn", "pallas"])
def test_softmax_layer_flash_paths_on_gpu(implementation):
    b, t, f = 2, 300, 256
    layer = SoftmaxAttention(
        num_heads=4,
        in_features=f,
        causal=True,
        use_bias=False,
        dtype=jnp.bfloat16,
        implementation=implementation,
        rngs=nnx.Rngs(0),
    )
    x = jax.random.normal(fresh_key(), (b, t, f))
    mask = padding_mask("left", b, t)
    q, k, v = _project(layer, x.astype(jnp.bfloat16))
    expected = _out(
        layer, _softmax_reference(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask, True)
    )
    assert rel_error(layer(x, padding_mask=mask), expected) <= 3e-2


def test_rope_matches_complex_rotation_and_is_relative():
    b, t, h, d, r = 2, 6, 3, 16, 8
    x = jax.random.normal(fresh_key(), (b, t, h, d))
    pos = jax.random.randint(fresh_key(), (b, t), 0, 1000)
    out = apply_rope(x, pos, r)
    # Independent form: pairs as complex numbers times exp(i * pos * theta_j).
    theta = 10000.0 ** (-np.arange(0, r, 2) / r)
    xn = np.asarray(x, np.float64)
    z = xn[..., 0:r:2] + 1j * xn[..., 1:r:2]
    z = z * np.exp(1j * np.asarray(pos, np.float64)[:, :, None, None] * theta)
    expected = xn.copy()
    expected[..., 0:r:2], expected[..., 1:r:2] = z.real, z.imag
    assert rel_error(out, expected) <= 1e-5
    np.testing.assert_array_equal(out[..., r:], x[..., r:])
    # Scores depend on the position difference only.
    q, k = x[:1, :1], x[1:, :1]
    score = lambda m, n: jnp.sum(apply_rope(q, jnp.array([[m]]), r) * apply_rope(k, jnp.array([[n]]), r))  # noqa: E731
    np.testing.assert_allclose(score(7, 3), score(107, 103), rtol=1e-4)


def test_positions_ignore_left_padding():
    mask = jnp.array([[False, False, True, True], [True, True, True, True]])
    np.testing.assert_array_equal(positions_from_mask(mask, mask.shape), [[0, 0, 0, 1], [0, 1, 2, 3]])
    np.testing.assert_array_equal(positions_from_mask(None, (1, 3), jnp.array([5])), [[5, 6, 7]])


def test_parameter_layout_matches_flax_multihead_attention():
    """Same parameter names and shapes as nnx.MultiHeadAttention: swapping is one line."""
    kwargs = dict(num_heads=4, in_features=32, qkv_features=64, out_features=16, rngs=nnx.Rngs(0))
    reference = nnx.state(nnx.MultiHeadAttention(**kwargs), nnx.Param)
    shapes = lambda state: {p: v.shape for p, v in nnx.to_flat_state(state)}  # noqa: E731
    cosine = shapes(nnx.state(CosineAttention(**kwargs), nnx.Param))
    assert cosine.pop(("stabilizer",)) == (4,)
    assert cosine == shapes(reference)
    assert shapes(nnx.state(SoftmaxAttention(**kwargs), nnx.Param)) == shapes(reference)


@pytest.mark.parametrize("cls", [CosineAttention, SoftmaxAttention])
def test_layer_errors(cls):
    with pytest.raises(ValueError, match=r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"):
        cls(num_heads=4, in_features=12, num_kv_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"rotary_dim must be even"):
        cls(num_heads=2, in_features=8, rotary_dim=3, rngs=nnx.Rngs(0))
    layer = cls(num_heads=2, in_features=8, causal=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"inputs_q must have shape \(batch, seq, 8\).*\(2, 3, 5\)"):
        layer(jnp.ones((2, 3, 5)))
    with pytest.raises(ValueError, match=r"init_cache"):
        layer(jnp.ones((2, 1, 8)), decode=True)
    bidir = cls(num_heads=2, in_features=8, causal=False, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"decode=True needs a causal"):
        bidir(jnp.ones((2, 1, 8)), decode=True)


def test_the_examples_in_the_cosine_attention_docstring_run():
    import doctest

    from cottention_jax.layers import cosine

    result = doctest.testmod(cosine, verbose=False, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8 and result.failed == 0, result


def test_the_layer_base_is_abstract():
    from cottention_jax.layers import ProjectedAttention

    with pytest.raises(TypeError, match="abstract"):
        ProjectedAttention(num_heads=2, in_features=8, rngs=nnx.Rngs(0))
