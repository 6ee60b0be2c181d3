"""`softmax_attention` (cottention_jax/softmax_ops.py): every path against a written-out softmax.

Runnable without a GPU:
  * "xla", and "pallas" in interpret mode, vs a float32 softmax written out with einsum:
    causal and bidirectional, no / right / left / random padding, GQA, lengths that are not
    a block multiple, bf16 and f32, outputs and the gradients in q, k and v;
  * the "cudnn" path's packing (real tokens first, padding as per-row lengths) with the
    cuDNN kernel swapped for XLA's length-masked attention (the CPU cannot run cuDNN);
  * the packing permutation on its own, the default choice, bad input, linear memory of
    the "pallas" program, and the CUDA lowering of "pallas" (forward + backward) for an
    abstract H100 through `jax.export`; the model configs' `implementation` switch.
Tests marked `gpu` run "cudnn", "pallas" and the default on the device.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import cottention_jax as ca
from cottention_jax import softmax_ops as so
from cottention_jax.models import GPT, gpt_config
from cottention_jax.models.bert import BertConfig
from tests._util import export_for_h100, fresh_key, padding_mask, rel_error
from tests.test_linear_memory import _largest_intermediate

HI = jax.lax.Precision.HIGHEST
F32_TOL, LOW_TOL = 1e-5, 2e-2  # float32; bf16 / fp16 (and any GPU kernel: tf32 dots)
CPU_PATHS = ["xla", "pallas", "cudnn-packing"]


# ----------------------------------------------------------------------------- helpers


def softmax_reference(q, k, v, mask, causal):
    """softmax(q k^T / sqrt(D)) v in float32, masks written out; padded query rows zero."""
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    group = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    t = q.shape[1]
    s = jnp.einsum("bthd,bshd->bhts", q, k, precision=HI) / np.sqrt(q.shape[-1])
    allowed = jnp.ones((1, 1, t, t), bool)
    if causal:
        allowed = allowed & jnp.tril(jnp.ones((t, t), bool))
    if mask is not None:
        allowed = allowed & mask[:, None, None, :]
    p = jax.nn.softmax(jnp.where(allowed, s, -1e30), axis=-1)  # finite: padded rows stay finite
    o = jnp.einsum("bhts,bshd->bthd", p, v, precision=HI)
    return o if mask is None else jnp.where(mask[:, :, None, None], o, 0.0)


def make_mask(kind, b, t):
    """(B, T) bool or None: 'none', 'right', 'left' (tests/_util) or 'random' (>= 1 real per row)."""
    if kind != "random":
        return padding_mask(kind, b, t)
    mask = jax.random.bernoulli(fresh_key(), 0.6, (b, t))
    return mask.at[jnp.arange(b), jax.random.randint(fresh_key(), (b,), 0, t)].set(True)


def make_qkv(b, t, h, kv, d, dtype):
    kq, kk, kv_ = jax.random.split(fresh_key(), 3)
    return (
        jax.random.normal(kq, (b, t, h, d)).astype(dtype),
        jax.random.normal(kk, (b, t, kv, d)).astype(dtype),
        jax.random.normal(kv_, (b, t, kv, d)).astype(dtype),
    )


@pytest.fixture
def run_path(monkeypatch):
    """run(path, q, k, v, causal, mask) through `softmax_attention` on the CPU.

    "cudnn-packing" is the "cudnn" path with the kernel swapped: the same packing and
    query/key_value_seq_lengths, attended by XLA instead of cuDNN.
    """

    def run(path, q, k, v, causal, mask):
        if path == "cudnn-packing":
            monkeypatch.setattr(so, "_CUDNN_KERNEL", "xla")
            monkeypatch.setattr(so, "_check_device", lambda *args: None)
            path = "cudnn"
        return so.softmax_attention(q, k, v, causal=causal, padding_mask=mask, implementation=path, interpret=True)

    return run


def _tol(dtype):
    return F32_TOL if jnp.dtype(dtype) == jnp.float32 else LOW_TOL


# ----------------------------------------------------------------------------- forward

FORWARD_CASES = [  # (b, t, h, kv, d, dtype, causal, pad)
    *[
        (2, 37, 4, 2, 16, jnp.float32, causal, pad)
        for causal in (True, False)
        for pad in ("none", "right", "left", "random")
    ],
    (2, 37, 4, 2, 16, jnp.bfloat16, True, "left"),
    (2, 37, 4, 1, 32, jnp.bfloat16, False, "random"),
    (2, 200, 2, 1, 48, jnp.float32, True, "random"),  # pads to 256: two forward blocks, D not 2^n
    (2, 200, 2, 2, 16, jnp.float32, False, "none"),  # no mask, but a padded tail to hide
    (1, 16, 2, 2, 8, jnp.float32, False, "right"),  # head_dim below Triton's 16
]


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("b,t,h,kv,d,dtype,causal,pad", FORWARD_CASES)
def test_paths_match_written_out_softmax(run_path, path, b, t, h, kv, d, dtype, causal, pad):
    q, k, v = make_qkv(b, t, h, kv, d, dtype)
    mask = make_mask(pad, b, t)
    out = run_path(path, q, k, v, causal, mask)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert rel_error(out, softmax_reference(q, k, v, mask, causal)) <= _tol(dtype)
    if mask is not None:  # padded query rows are exactly zero
        assert not np.any(np.asarray(out, np.float32)[~np.asarray(mask)])


GRAD_CASES = [
    (True, "left", jnp.float32),
    (False, "random", jnp.float32),
    (True, "none", jnp.float32),
    (True, "random", jnp.bfloat16),
]


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("causal,pad,dtype", GRAD_CASES)
def test_gradients_match_written_out_softmax(run_path, path, causal, pad, dtype):
    b, t, h, kv, d = 2, 37, 4, 2, 16
    q, k, v = make_qkv(b, t, h, kv, d, dtype)
    mask = make_mask(pad, b, t)
    cot = jax.random.normal(fresh_key(), (b, t, h, d))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * cot)

    got = jax.grad(loss(lambda *a: run_path(path, *a, causal, mask)), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(lambda *a: softmax_reference(*a, mask, causal)), argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", got, want, strict=True):
        assert g.dtype == dtype, name
        assert rel_error(g, w) <= _tol(dtype) * 2, name


@pytest.mark.parametrize("path", CPU_PATHS)
@pytest.mark.parametrize("causal", [True, False])
def test_a_row_of_only_padding_gives_zeros_and_finite_gradients(run_path, path, causal):
    b, t, h, d = 2, 24, 2, 16
    q, k, v = make_qkv(b, t, h, h, d, jnp.float32)
    mask = make_mask("random", b, t).at[1].set(False)
    out = run_path(path, q, k, v, causal, mask)
    assert not np.any(np.asarray(out[1]))
    assert rel_error(out, softmax_reference(q, k, v, mask, causal)) <= F32_TOL
    grads = jax.grad(lambda q, k, v: jnp.sum(run_path(path, q, k, v, causal, mask) ** 2), argnums=(0, 1, 2))(q, k, v)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g))) and not np.any(np.asarray(g[1]))


# ----------------------------------------------------------------------------- the packing


@pytest.mark.parametrize("b,t", [(5, 13), (3, 1)])
def test_real_tokens_first_is_the_stable_partition(b, t):
    mask = make_mask("random", b, t).at[0].set(True)
    if b > 2:
        mask = mask.at[1].set(False)
    order, inverse, lengths = so.real_tokens_first(mask)
    m = np.asarray(mask)
    for row in range(b):  # independent form: indices of the real tokens, then of the padding
        expected = np.concatenate([np.flatnonzero(m[row]), np.flatnonzero(~m[row])])
        np.testing.assert_array_equal(order[row], expected)
        np.testing.assert_array_equal(np.asarray(inverse[row])[expected], np.arange(t))
    np.testing.assert_array_equal(lengths, m.sum(axis=1))
    assert order.dtype == inverse.dtype == lengths.dtype == jnp.int32
    x = jax.random.normal(fresh_key(), (b, t, 2, 3))
    packed = so._take_tokens(x, order)
    np.testing.assert_array_equal(so._take_tokens(packed, inverse), x)
    # packed rows are right-padded: their first `lengths` tokens are exactly the real ones
    real_first = np.arange(t)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_array_equal(np.take_along_axis(m, np.asarray(order), axis=1), real_first)


# ----------------------------------------------------------------------------- choosing a path


@pytest.mark.parametrize(
    "backend,dtype,head_dim,cc,expected",
    [
        ("cpu", jnp.bfloat16, 64, None, "xla"),
        ("tpu", jnp.bfloat16, 128, None, "xla"),
        ("gpu", jnp.bfloat16, 128, "9.0", "cudnn"),
        ("gpu", jnp.float16, 64, "8.0", "cudnn"),
        ("gpu", jnp.bfloat16, 256, "9.0", "cudnn"),
        ("gpu", jnp.bfloat16, 256, "8.6", "pallas"),  # > 128 before Hopper
        ("gpu", jnp.bfloat16, 100, "9.0", "pallas"),  # not a multiple of 8
        ("gpu", jnp.bfloat16, 264, "10.0", "pallas"),  # > 256
        ("gpu", jnp.float32, 64, "9.0", "pallas"),  # cuDNN flash is 16-bit only
        ("gpu", jnp.bfloat16, 64, "7.5", "pallas"),  # pre-Ampere
        ("gpu", jnp.bfloat16, 64, "gfx90a", "pallas"),  # not CUDA
    ],
)
def test_default_implementation_rule(backend, dtype, head_dim, cc, expected):
    assert so.default_implementation(dtype, head_dim, backend=backend, compute_capability=cc) == expected


def test_default_on_this_backend_and_the_reasons():
    if jax.default_backend() != "gpu":
        assert so.default_implementation(jnp.bfloat16, 64) == "xla"
    assert so.cudnn_unsupported_reason(jnp.bfloat16, 64, "9.0") is None
    assert "bfloat16 or float16" in so.cudnn_unsupported_reason(jnp.float32, 64, "9.0")
    assert "head_dim=100" in so.cudnn_unsupported_reason(jnp.float16, 100, "9.0")
    assert "compute capability >= 8.0" in so.cudnn_unsupported_reason(jnp.float16, 64, None)


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_value_error():
    q, k, v = make_qkv(2, 8, 4, 2, 16, jnp.float32)
    sa = so.softmax_attention
    with pytest.raises(ValueError, match=r"q must have rank 4.*q\.shape=\(2, 8, 4\)"):
        sa(q[..., 0], k, v, causal=True)
    with pytest.raises(ValueError, match=r"k must be a floating-point array.*int32"):
        sa(q, k.astype(jnp.int32), v, causal=True)
    with pytest.raises(ValueError, match=r"q, k and v must share a dtype; got bfloat16, float32, float32"):
        sa(q.astype(jnp.bfloat16), k, v, causal=True)
    with pytest.raises(ValueError, match=r"same batch size.*q\.shape=\(1, 8, 4, 16\)"):
        sa(q[:1], k, v, causal=True)
    with pytest.raises(ValueError, match=r"same sequence length.*k\.shape=\(2, 7, 2, 16\)"):
        sa(q, k[:, :7], v[:, :7], causal=True)
    with pytest.raises(ValueError, match=r"same head_dim.*v\.shape=\(2, 8, 2, 8\)"):
        sa(q, k, v[..., :8], causal=True)
    with pytest.raises(ValueError, match=r"k and v must have the same number of heads"):
        sa(q, k, v[:, :, :1], causal=True)
    with pytest.raises(ValueError, match=r"heads of q \(4\) must be a multiple of kv heads of k and v \(3\)"):
        sa(q, *make_qkv(2, 8, 4, 3, 16, jnp.float32)[1:], causal=True)
    with pytest.raises(ValueError, match=r"padding_mask must have shape \(batch, seq\) = \(2, 8\).*\(2, 7\)"):
        sa(q, k, v, causal=True, padding_mask=jnp.ones((2, 7), bool))
    with pytest.raises(ValueError, match=r"padding_mask must be a bool array.*int32"):
        sa(q, k, v, causal=True, padding_mask=jnp.ones((2, 8), jnp.int32))
    with pytest.raises(ValueError, match=r"implementation must be one of \('xla', 'cudnn', 'pallas'\).*'flash'"):
        sa(q, k, v, causal=True, implementation="flash")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the no-GPU errors")
def test_gpu_paths_without_a_gpu_say_so():
    q, k, v = make_qkv(1, 8, 2, 2, 16, jnp.bfloat16)
    with pytest.raises(ValueError, match=r"implementation='cudnn' needs a GPU.*'cpu'"):
        so.softmax_attention(q, k, v, causal=True, implementation="cudnn", interpret=True)
    with pytest.raises(ValueError, match=r"implementation='pallas' needs a GPU.*interpret=True"):
        so.softmax_attention(q, k, v, causal=True, implementation="pallas")


# ----------------------------------------------------------------------------- memory and lowering


def _loss_and_grads(causal, mask, implementation="pallas", interpret=True):
    def loss(q, k, v):
        out = so.softmax_attention(
            q, k, v, causal=causal, padding_mask=mask, implementation=implementation, interpret=interpret
        )
        return jnp.sum(out.astype(jnp.float32) ** 2)

    return jax.value_and_grad(loss, argnums=(0, 1, 2))


def test_pallas_program_has_no_seq_by_seq_intermediate():
    b, t, h, d = 1, 2048, 2, 32
    q = jnp.zeros((b, t, h, d))
    mask = jnp.ones((b, t), bool)
    largest = _largest_intermediate(jax.make_jaxpr(_loss_and_grads(True, mask))(q, q, q).jaxpr)
    assert largest <= b * t * h * d, largest
    # the check can fail: the dense path builds (B, H, T, T) scores
    dense = _largest_intermediate(jax.make_jaxpr(_loss_and_grads(True, mask, "xla"))(q, q, q).jaxpr)
    assert dense >= h * t * t, dense


@pytest.mark.parametrize("causal,masked,dtype", [(True, True, jnp.bfloat16), (False, False, jnp.float32)])
def test_pallas_path_lowers_for_h100(monkeypatch, causal, masked, dtype):
    """Forward + backward through the Pallas -> Triton lowering for an abstract H100 (no GPU needed;
    the op's "needs a GPU" check looks at JAX's backend, the CPU here, so it is switched off)."""
    monkeypatch.setattr(so, "_check_device", lambda *args: None)
    b, t, h, kv, d = 2, 200, 4, 2, 48
    spec = lambda *s: jax.ShapeDtypeStruct(s, dtype)  # noqa: E731
    mask = jnp.ones((b, t), bool) if masked else None
    exported = export_for_h100(
        _loss_and_grads(causal, mask, interpret=False), spec(b, t, h, d), spec(b, t, kv, d), spec(b, t, kv, d)
    )
    assert exported.mlir_module().count("__gpu$xla.gpu.triton") == 3  # forward, backward prep, backward
    assert exported.platforms == ("cuda",)


# ----------------------------------------------------------------------------- models and API


def test_model_configs_check_implementation_per_attention():
    gpt_config("tiny", attention="softmax", implementation="cudnn")
    gpt_config("tiny", attention="cosine", implementation="reference")
    BertConfig(attention="softmax", implementation="pallas")
    with pytest.raises(
        ValueError,
        match=r"implementation for attention='softmax' must be one of "
        r"\(None, 'xla', 'cudnn', 'pallas'\); got 'reference'",
    ):
        gpt_config("tiny", attention="softmax", implementation="reference")
    with pytest.raises(ValueError, match=r"implementation for attention='cosine' .* got 'cudnn'"):
        BertConfig(attention="cosine", implementation="cudnn")
    with pytest.raises(
        ValueError,
        match=r"implementation for attention='taylor2' must be one of \(None,\); "
        r"got 'xla'",
    ):
        gpt_config("tiny", attention="taylor2", implementation="xla")


def test_gpt_implementation_switch_reaches_softmax_attention():
    tokens = jax.random.randint(fresh_key(), (2, 24), 0, 256)
    mask = padding_mask("left", 2, 24)
    logits = {}
    for impl in ("xla", "pallas"):
        model = GPT(gpt_config("tiny", attention="softmax", implementation=impl, interpret=True), rngs=nnx.Rngs(7))
        assert all(block.attn.implementation == impl for block in model.blocks)
        logits[impl] = model(tokens, padding_mask=mask)
    assert rel_error(logits["pallas"], logits["xla"]) <= 1e-5
    GPT(gpt_config("tiny", attention="taylor2", interpret=True), rngs=nnx.Rngs(0))  # accepted, ignored


def test_exported_names_exist_and_the_top_level_reexports_them():
    assert all(hasattr(so, name) for name in so.__all__)
    assert so.IMPLEMENTATIONS == ("xla", "cudnn", "pallas")
    assert ca.SOFTMAX_IMPLEMENTATIONS == so.IMPLEMENTATIONS and ca.softmax_attention is so.softmax_attention
    assert {"SOFTMAX_IMPLEMENTATIONS", "softmax_attention"} <= set(ca.__all__)
    params = inspect.signature(so.softmax_attention).parameters
    assert list(params)[:3] == ["q", "k", "v"]
    assert params["causal"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["causal"].default is inspect.Parameter.empty
    for name, default in [("padding_mask", None), ("implementation", None), ("interpret", False)]:
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY and params[name].default == default


# ----------------------------------------------------------------------------- on the GPU

GPU_CASES = [(causal, pad) for causal in (True, False) for pad in ("none", "right", "left", "random")]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "path,dtype", [("cudnn", jnp.bfloat16), ("cudnn", jnp.float16), ("pallas", jnp.bfloat16), ("pallas", jnp.float32)]
)
@pytest.mark.parametrize("causal,pad", GPU_CASES)
def test_gpu_paths_match_written_out_softmax(path, dtype, causal, pad):
    b, t, h, kv, d = 2, 300, 8, 2, 64
    q, k, v = make_qkv(b, t, h, kv, d, dtype)
    mask = make_mask(pad, b, t)
    cot = jax.random.normal(fresh_key(), (b, t, h, d))

    def loss(fn):
        return lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32) * cot)

    def run(q, k, v):
        return so.softmax_attention(q, k, v, causal=causal, padding_mask=mask, implementation=path)

    ref = lambda q, k, v: softmax_reference(q, k, v, mask, causal)  # noqa: E731
    assert rel_error(jax.jit(run)(q, k, v), ref(q, k, v)) <= LOW_TOL
    got = jax.jit(jax.grad(loss(run), argnums=(0, 1, 2)))(q, k, v)
    want = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for name, g, w in zip("qkv", got, want, strict=True):
        assert rel_error(g, w) <= 2 * LOW_TOL, name


@pytest.mark.gpu
def test_gpu_default_is_a_flash_path_and_linear_in_memory():
    b, t, h, d = 1, 16384, 4, 64
    chosen = {dt: so.default_implementation(dt, d) for dt in (jnp.bfloat16, jnp.float32)}
    assert chosen[jnp.float32] == "pallas" and chosen[jnp.bfloat16] in ("cudnn", "pallas")
    for dtype in (jnp.bfloat16, jnp.float32):
        q = jax.ShapeDtypeStruct((b, t, h, d), dtype)
        mask = jax.ShapeDtypeStruct((b, t), jnp.bool_)

        def loss(q, k, v, mask):
            out = so.softmax_attention(q, k, v, causal=True, padding_mask=mask)
            return jnp.sum(out.astype(jnp.float32) ** 2)

        compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, q, q, mask).compile()
        analysis = compiled.memory_analysis()
        scores = b * h * t * t * 2  # one (B, H, T, T) bf16 score matrix: 2 GiB
        assert analysis.temp_size_in_bytes < scores // 16, (dtype, analysis.temp_size_in_bytes)
