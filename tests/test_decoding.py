"""Decoding is a mode of the model: step-by-step logits equal the parallel forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cottention_jax import decoding
from cottention_jax.layers import CosineAttention, SoftmaxAttention
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
    tokens, mask = _left_padded([20, 13], total)  # row 1 has 11 padding positions
    parallel = model(tokens, padding_mask=mask)  # (B, T, V)

    last = decoding.prefill(model, tokens[:, :prompt_len], mask[:, :prompt_len], max_length=total)
    step, cache = decoding.make_decode_step(model)
    stepped = [last]
    for t in range(prompt_len, total - 1):
        # padded steps are fed with their mask through the model directly; real ones through the jitted step
        if bool(jnp.all(mask[:, t])):
            logits, cache = step(cache, tokens[:, t])
        else:
            nnx.update(model, cache)
            logits = model(tokens[:, t : t + 1], padding_mask=mask[:, t : t + 1], decode=True)[:, -1]
            cache = nnx.state(model, nnx.Cache)
        stepped.append(logits)
    stepped = jnp.stack(stepped, axis=1)  # positions prompt_len-1 .. T-2
    expected = parallel[:, prompt_len - 1 : total - 1]
    real = mask[:, prompt_len - 1 : total - 1]
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
    """generate (prefill + lax.scan) equals the full parallel model's argmax: with a causal model, one
    parallel pass over prompt + output gives at each position the logits a naive loop (re-running the
    model on the sequence so far) would see, so every generated token is the argmax at the position before it."""
    model = _model(attention)
    model.eval()
    prompt, mask = _left_padded([6, 3], 6)
    out = decoding.generate(model, prompt, prompt_mask=mask, max_new_tokens=7)
    assert out.shape == (2, 7) and out.dtype == jnp.int32
    seq = jnp.concatenate([prompt, out.astype(prompt.dtype)], axis=1)
    seq_mask = jnp.concatenate([mask, jnp.ones(out.shape, bool)], axis=1)
    logits = model(seq, padding_mask=seq_mask)
    np.testing.assert_array_equal(out, jnp.argmax(logits[:, prompt.shape[1] - 1 : -1], axis=-1))


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
    assert freq[3] == 0.0  # outside the top 3
    np.testing.assert_allclose(freq[:3], np.array([0.5, 0.3, 0.15]) / 0.95, atol=0.015)
    hot = jax.vmap(lambda k: decoding.sample_logits(logits, k, temperature=0.25)[0])(keys)
    assert np.mean(np.asarray(hot) == 0) > 0.85  # low temperature sharpens
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
    assert sizes[0] == sizes[1] == 2 * (cfg.num_layers * (cfg.num_heads * cfg.head_dim**2 + 1) + 1)
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
    want_leaves = jax.tree.leaves(nnx.state(fresh, nnx.Cache))
    for got_leaf, want_leaf in zip(jax.tree.leaves(cache), want_leaves, strict=True):
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


# ----------------------------------------------------------------------------- past the softmax KV cache


def test_decode_loop_without_room_in_the_kv_cache_is_refused():
    """The loop used to return junk tokens ([211, 0, 0, ...]: NaN logits past the cache) when `steps` did
    not fit; the cache is concrete when the loop is made, and again when it is called."""
    model = _model("softmax")
    prompt, mask = _left_padded([4, 2], 4)
    logits = decoding.prefill(model, prompt, mask, max_length=4)
    with pytest.raises(
        ValueError,
        match=r"KV cache of blocks\.0\.attn holds 4 positions, 4 of them used: "
        r"3 more token\(s\) do not fit\. Prefill with a larger max_length",
    ):
        decoding.make_decode_loop(model, 3)
    # room for exactly `steps` is enough, and the loop's own tokens then match generate's
    want = decoding.generate(model, prompt, prompt_mask=mask, max_new_tokens=3)
    logits = decoding.prefill(model, prompt, mask, max_length=7)
    loop, cache = decoding.make_decode_loop(model, 3)
    got, full = loop(cache, logits, jax.random.PRNGKey(0))
    np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match=r"holds 7 positions, 7 of them used: 3 more"):
        loop(full, logits, jax.random.PRNGKey(0))


def test_eager_decode_call_past_the_kv_cache_is_refused():
    """An eager model call past the cache used to give NaN logits; a chunk longer than the whole cache
    a TypeError from dynamic_update_slice (under jit too, where the index is unknown)."""
    model = _model("softmax")
    tokens, _ = _left_padded([6, 6], 6)
    decoding.prefill(model, tokens[:, :3], max_length=4)
    assert bool(jnp.all(jnp.isfinite(model(tokens[:, 3:4], decode=True))))  # slot 4 of 4: fits
    with pytest.raises(
        ValueError,
        match=r"SoftmaxAttention: the KV cache holds 4 positions, 4 of them used: "
        r"1 more token\(s\) do not fit\. Prefill with a larger max_length",
    ):
        model(tokens[:, 4:5], decode=True)
    model.init_cache(2, 4)
    with pytest.raises(ValueError, match=r"the KV cache holds 4 positions, 0 of them used: 6 more token\(s\)"):
        model(tokens, decode=True)
    graphdef, cache, rest = nnx.split(model, nnx.Cache, ...)
    with pytest.raises(ValueError, match=r"the KV cache holds 4 positions: 6 more token\(s\) do not fit"):
        jax.jit(decoding._cached_call, static_argnums=0)(graphdef, cache, rest, tokens)


# ----------------------------------------------------------------------------- a model of one's own


class _TinyLM(nnx.Module):
    """A user's own decoder from our layers (the README example): embedding, one causal attention
    layer with rotary embeddings and no positions= anywhere, an LM head."""

    def __init__(self, vocab: int, d: int, attention=CosineAttention, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(vocab, d, rngs=rngs)
        self.attn = attention(num_heads=2, in_features=d, causal=True, rotary_dim=8, rngs=rngs)
        self.head = nnx.Linear(d, vocab, rngs=rngs)

    def init_cache(self, batch_size, max_length):
        self.attn.init_cache((batch_size, max_length, self.embed.features))

    def __call__(self, tokens, *, padding_mask=None, decode=False, prefill=False):
        x = self.embed(tokens)
        x = x + self.attn(x, padding_mask=padding_mask, decode=decode, prefill=prefill)
        return self.head(x)


@pytest.mark.parametrize("attention", [CosineAttention, SoftmaxAttention])
def test_generate_on_a_model_of_ones_own_is_greedy_decoding(attention):
    """generate on _TinyLM (left-padded prompts) is greedy decoding of its parallel pass: over the prompt
    and the generated tokens, the causal parallel logits at each position pick the next generated token."""
    model = _TinyLM(50, 16, attention, rngs=nnx.Rngs(int(jax.random.randint(fresh_key(), (), 0, 1e6))))
    assert isinstance(model, decoding.DecodableModel)
    prompt, mask = _left_padded([5, 2], 5, vocab=50)
    out = decoding.generate(model, prompt, prompt_mask=mask, max_new_tokens=6)
    seq = jnp.concatenate([prompt, out.astype(prompt.dtype)], axis=1)  # (B, 11)
    seq_mask = jnp.concatenate([mask, jnp.ones(out.shape, bool)], axis=1)
    parallel = model(seq, padding_mask=seq_mask)  # (B, 11, V)
    np.testing.assert_array_equal(out, jnp.argmax(parallel[:, 4:10], axis=-1))


def test_a_model_without_the_decoding_protocol_is_refused_by_name():
    prompt = jnp.ones((1, 3), jnp.int32)

    class NoCache(nnx.Module):
        def __call__(self, tokens, *, padding_mask=None, decode=False, prefill=False):
            return jnp.zeros((*tokens.shape, 4))

    class NoPrefill(NoCache):
        def init_cache(self, batch_size, max_length):
            pass

        def __call__(self, tokens, *, padding_mask=None, decode=False):
            return jnp.zeros((*tokens.shape, 4))

    class BadInitCache(NoCache):
        def init_cache(self, batch_size):
            pass

    class NotCallable(nnx.Module):
        def init_cache(self, batch_size, max_length):
            pass

    cases = [
        (NoCache(), r"NoCache has no init_cache\(batch_size, max_length\) method"),
        (NoPrefill(), r"NoPrefill\.__call__ must take the keyword arguments .* it lacks prefill"),
        (BadInitCache(), r"BadInitCache\.init_cache must take \(batch_size, max_length\)"),
        (NotCallable(), r"NotCallable has no __call__\(tokens, \*, padding_mask, decode, prefill\)"),
        (lambda tokens: tokens, r"needs a flax\.nnx\.Module following decoding\.DecodableModel; got a function"),
    ]
    for model, match in cases:
        with pytest.raises(ValueError, match=match):
            decoding.generate(model, prompt, max_new_tokens=2)
        with pytest.raises(ValueError, match=match):
            decoding.prefill(model, prompt)
    with pytest.raises(ValueError, match=r"NoCache has no init_cache"):
        decoding.make_decode_step(NoCache())
    with pytest.raises(ValueError, match=r"NoCache has no init_cache"):
        decoding.make_decode_loop(NoCache(), 2)
