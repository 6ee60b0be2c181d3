"""Decoding is a mode of the model: step-by-step logits equal the parallel forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cottention_jax import decoding
from cottention_jax.memory import compiled_memory_bytes
from cottention_jax.models import GPT, gpt_config
from tests._util import fresh_key, rel_error, stepwise_logits


def _model(attention, **overrides):
    return GPT(gpt_config("tiny", attention=attention, num_kv_heads=2, **overrides), rngs=nnx.Rngs(7))


def _left_padded(lengths, total, vocab=256):
    """(B, total) tokens, left-padded to `total`, and the mask."""
    tokens = jax.random.randint(fresh_key(), (len(lengths), total), 1, vocab)
    mask = jnp.arange(total)[None, :] >= (total - jnp.array(lengths))[:, None]
    return jnp.where(mask, tokens, 0), mask


@pytest.mark.parametrize("attention", ["cosine", "softmax"])
def test_stepwise_logits_equal_parallel_logits(attention):
    """Prefill a left-padded prompt, then feed the true continuation one token at a time."""
    model = _model(attention)
    total, prompt_len = 24, 9
    tokens, mask = _left_padded([20, 13], total)    # row 1 has 11 padding positions
    parallel = model(tokens, padding_mask=mask)     # (B, T, V)

    last = decoding.prefill(model, tokens[:, :prompt_len], mask[:, :prompt_len], max_length=total)
    step, cache = decoding.make_decode_step(model)
    stepped = [last]
    for t in range(prompt_len, total - 1):
        # padded steps are fed with their mask through the model directly; real ones through the jitted step
        if bool(jnp.all(mask[:, t])):
            logits, cache = step(cache, tokens[:, t])
        else:
            nnx.update(model, cache)
            logits = model(tokens[:, t:t + 1], padding_mask=mask[:, t:t + 1], decode=True)[:, -1]
            cache = nnx.state(model, nnx.Cache)
        stepped.append(logits)
    stepped = jnp.stack(stepped, axis=1)                                # positions prompt_len-1 .. T-2
    expected = parallel[:, prompt_len - 1:total - 1]
    real = mask[:, prompt_len - 1:total - 1]
    assert rel_error(jnp.where(real[..., None], stepped, 0), jnp.where(real[..., None], expected, 0)) <= 1e-5


def test_stepwise_logits_under_tf32_matmuls_stay_within_tf32_error():
    """JAX's GPU default for float32 matmuls is TF32 (the suite pins "highest"; see conftest.py).

    Under TF32 the parallel and the stepwise (RNN) logits of the same model differ by operand
    rounding at unit roundoff u = 2^-11 ~ 4.9e-4 in every projection; through two layers that
    stays well under 20u = 1e-2. On CPU the setting has no effect and the error is float32's.
    """
    model = _model("cosine")
    tokens = jax.random.randint(fresh_key(), (2, 16), 1, 256)
    with jax.default_matmul_precision("tensorfloat32"):
        parallel = model(tokens)
        stepped = stepwise_logits(model, tokens, 5, max_length=16)
    assert rel_error(stepped, parallel[:, 4:15]) <= 1e-2


@pytest.mark.parametrize("attention", ["cosine", "softmax"])
def test_greedy_generate_matches_a_naive_loop(attention):
    """generate (prefill + lax.scan) equals re-running the full parallel model and taking argmax."""
    model = _model(attention)
    model.eval()
    prompt, mask = _left_padded([6, 3], 6)
    out = decoding.generate(model, prompt, prompt_mask=mask, max_new_tokens=7)
    assert out.shape == (2, 7) and out.dtype == jnp.int32
    seq, seq_mask = prompt, mask
    for i in range(7):
        nxt = jnp.argmax(model(seq, padding_mask=seq_mask)[:, -1], axis=-1)
        np.testing.assert_array_equal(out[:, i], nxt)
        seq = jnp.concatenate([seq, nxt[:, None].astype(seq.dtype)], axis=1)
        seq_mask = jnp.concatenate([seq_mask, jnp.ones((2, 1), bool)], axis=1)


def test_sampling_is_keyed_and_respects_top_k():
    model = _model("cosine")
    prompt, mask = _left_padded([5, 5], 5)
    kw = dict(prompt_mask=mask, max_new_tokens=6, temperature=1.0)
    a = decoding.generate(model, prompt, key=jax.random.PRNGKey(1), **kw)
    b = decoding.generate(model, prompt, key=jax.random.PRNGKey(1), **kw)
    c = decoding.generate(model, prompt, key=jax.random.PRNGKey(2), **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    top1 = decoding.generate(model, prompt, key=jax.random.PRNGKey(3), top_k=1, **kw)
    np.testing.assert_array_equal(top1, decoding.generate(model, prompt, prompt_mask=mask, max_new_tokens=6))


def test_sample_logits_distribution():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 20000)
    draw = jax.vmap(lambda k: decoding.sample_logits(logits, k, temperature=1.0, top_k=3)[0])(keys)
    freq = np.bincount(np.asarray(draw), minlength=4) / len(keys)
    assert freq[3] == 0.0                                            # outside the top 3
    np.testing.assert_allclose(freq[:3], np.array([0.5, 0.3, 0.15]) / 0.95, atol=0.015)
    hot = jax.vmap(lambda k: decoding.sample_logits(logits, k, temperature=0.25)[0])(keys)
    assert np.mean(np.asarray(hot) == 0) > 0.85                       # low temperature sharpens
    with pytest.raises(ValueError, match="top_k must be in"):
        decoding.sample_logits(logits, keys[0], temperature=1.0, top_k=9)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        decoding.sample_logits(logits, None, temperature=1.0)


def _step_memory(model, max_length):
    decoding.prefill(model, jnp.ones((2, 4), jnp.int32), max_length=max_length)
    step, cache = decoding.make_decode_step(model)
    leaves = jax.tree.leaves(cache)
    return compiled_memory_bytes(step, cache, jnp.ones((2,), jnp.int32)), [x.shape for x in leaves]


def test_cosine_decode_state_does_not_grow():
    model = _model("cosine")
    mem_short, shapes_short = _step_memory(model, 64)
    mem_long, shapes_long = _step_memory(model, 8192)
    assert shapes_short == shapes_long and mem_short == mem_long
    # The state after generating 3 or 30 tokens has the same size: L x (d x d per head + count) + position.
    prompt = jnp.ones((2, 4), jnp.int32)
    sizes = []
    for n in (3, 30):
        decoding.generate(model, prompt, max_new_tokens=n)
        sizes.append(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Cache))))
    cfg = model.config
    assert sizes[0] == sizes[1] == 2 * (cfg.num_layers * (cfg.num_heads * cfg.head_dim ** 2 + 1) + 1)
    # The same measurement sees the KV cache of softmax attention grow with the context.
    soft_short, _ = _step_memory(_model("softmax"), 64)
    soft_long, _ = _step_memory(_model("softmax"), 8192)
    assert soft_long > 20 * soft_short


def test_decoding_input_errors():
    model = _model("cosine")
    prompt, mask = _left_padded([5, 3], 5)
    with pytest.raises(ValueError, match="left-padded"):
        decoding.generate(model, prompt, prompt_mask=mask[:, ::-1], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"prompt_mask must be a bool array"):
        decoding.generate(model, prompt, prompt_mask=mask.astype(jnp.int32), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        decoding.generate(model, prompt, prompt_mask=mask, max_new_tokens=0)
    with pytest.raises(ValueError, match="init_cache"):
        _model("cosine")(prompt, decode=True)


@pytest.mark.parametrize("attention", ["cosine", "softmax", "taylor2"])
def test_prefill_restarts_the_cache(attention):
    """prefill=True starts over: after a first prompt, a second prefill gives the logits and the cache
    of a model that only ever saw the second prompt."""
    model = _model(attention)
    first, _ = _left_padded([5, 7], 7)
    second, mask = _left_padded([9, 4], 9)
    decoding.prefill(model, first, max_length=12)
    graphdef, cache, rest = nnx.split(model, nnx.Cache, ...)
    again, cache = decoding._jitted_cached_call(graphdef, cache, rest, second, mask, prefill=True)
    fresh = _model(attention)
    want = decoding.prefill(fresh, second, mask, max_length=12)
    assert rel_error(again, want) <= 1e-6
    for got_leaf, want_leaf in zip(jax.tree.leaves(cache), jax.tree.leaves(nnx.state(fresh, nnx.Cache))):
        assert jnp.array_equal(got_leaf, want_leaf)


def test_decode_loop_continues_like_generate():
    """make_decode_loop after prefill = generate (greedy), for the cosine and the softmax model."""
    for attention in ("cosine", "softmax"):
        model = _model(attention)
        model.eval()
        prompt, mask = _left_padded([6, 3], 6)
        want = decoding.generate(model, prompt, prompt_mask=mask, max_new_tokens=5)
        logits = decoding.prefill(model, prompt, mask, max_length=11)
        loop, cache = decoding.make_decode_loop(model, 5)
        got, _ = loop(cache, logits, jax.random.PRNGKey(0))
        assert jnp.array_equal(got, want), attention


def test_prefill_needs_decode_and_a_long_enough_cache():
    model = _model("softmax")
    tokens, _ = _left_padded([8, 8], 8)
    with pytest.raises(ValueError, match="prefill=True restarts the decode cache; it needs decode=True"):
        model(tokens, prefill=True)
    with pytest.raises(ValueError, match=r"the prompt \(8 tokens\) is longer than the KV cache \(4 slots\)"):
        model.init_cache(2, 4)
        model(tokens, decode=True, prefill=True)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        decoding.make_decode_loop(model, 0)


