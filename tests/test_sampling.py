"""Nucleus (top-p) sampling and stopping at an end-of-sequence token in `decoding.generate`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cottention_jax import decoding
from cottention_jax.models import GPT, gpt_config
from tests._util import fresh_key


def _nucleus_np(logits: np.ndarray, temperature: float, top_k, top_p) -> np.ndarray:
    """The distribution sample_logits draws from, in float64 NumPy: top-k, then the smallest set of
    most likely tokens whose probability reaches top_p (ties with its least likely member kept)."""
    z = logits.astype(np.float64) / temperature
    if top_k is not None:
        z = np.where(z < np.sort(z)[-top_k], -np.inf, z)
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p, kind="stable")
    mass_before = np.cumsum(p[order]) - p[order]
    cutoff = p[order][mass_before < top_p].min()
    p = np.where(p >= cutoff, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize("top_k, top_p", [(None, 0.6), (None, 0.95), (5, 0.8), (None, 1.0)])
def test_top_p_samples_the_nucleus_distribution(top_k, top_p):
    logits = 2.0 * jax.random.normal(fresh_key(), (3, 12))
    keys = jax.random.split(fresh_key(), 6000)
    draws = np.asarray(
        jax.vmap(lambda k: decoding.sample_logits(logits, k, temperature=0.8, top_k=top_k, top_p=top_p))(keys)
    )  # (N, 3)
    for row in range(3):
        want = _nucleus_np(np.asarray(logits[row]), 0.8, top_k, top_p)
        freq = np.bincount(draws[:, row], minlength=12) / len(keys)
        assert np.all(freq[want == 0] == 0), (row, freq, want)  # never outside
        np.testing.assert_allclose(freq, want, atol=0.025)


def test_top_p_and_top_k_argument_errors():
    logits = jnp.zeros((1, 4))
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\] or None"):
            decoding.sample_logits(logits, fresh_key(), temperature=1.0, top_p=bad)
    for bad in (0, 5, True):
        with pytest.raises(ValueError, match=r"top_k must be in \[1, vocab=4\]"):
            decoding.sample_logits(logits, fresh_key(), temperature=1.0, top_k=bad)


def test_top_p_at_an_exact_tie_keeps_only_the_tokens_before_the_boundary():
    """p = [.5, .25, .25] (exact in float32), top_p = .5: token 0 alone reaches the nucleus mass, so it is
    the only token ever drawn. A nucleus that keeps one token too many at the boundary (the mass
    before a token compared with <= instead of <) draws tokens 1 and 2 half the time."""
    probs = jnp.array([0.5, 0.25, 0.25])
    logits = jnp.log(probs)[jax.random.permutation(fresh_key(), 3)][None]  # token order shuffled
    best = int(jnp.argmax(logits[0]))
    keys = jax.random.split(fresh_key(), 2000)
    draws = np.asarray(jax.vmap(lambda k: decoding.sample_logits(logits, k, temperature=1.0, top_p=0.5)[0])(keys))
    np.testing.assert_array_equal(draws, best)
    # just past the boundary the next token joins, and the one tied with it too: all three are drawn
    wider = np.asarray(jax.vmap(lambda k: decoding.sample_logits(logits, k, temperature=1.0, top_p=0.51)[0])(keys))
    assert set(np.unique(wider).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), -1.0, -float("inf"), "1.0", None])
def test_a_non_finite_or_negative_temperature_is_refused(temperature):
    logits, model, prompt = jnp.zeros((1, 4)), _model(), jnp.ones((1, 3), jnp.int32)
    match = r"temperature must be a finite number >= 0 \(0: greedy\); got "
    with pytest.raises(ValueError, match=match):
        decoding.sample_logits(logits, fresh_key(), temperature=temperature)
    with pytest.raises(ValueError, match=match):
        decoding.generate(model, prompt, max_new_tokens=2, key=fresh_key(), temperature=temperature)
    decoding.prefill(model, prompt, max_length=5)
    with pytest.raises(ValueError, match=match):
        decoding.make_decode_loop(model, 2, temperature=temperature)


@pytest.mark.parametrize("top_p", [float("inf"), float("nan"), -float("inf"), "0.5"])
def test_a_non_finite_top_p_is_refused(top_p):
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\] or None; got "):
        decoding.sample_logits(jnp.zeros((1, 4)), fresh_key(), temperature=1.0, top_p=top_p)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\] or None; got "):
        decoding.generate(
            _model(), jnp.ones((1, 3), jnp.int32), max_new_tokens=2, key=fresh_key(), temperature=1.0, top_p=top_p
        )


def _model():
    return GPT(gpt_config("tiny", attention="cosine", vocab_size=64), rngs=nnx.Rngs(3))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_stops_at_eos_and_matches_the_unstopped_run_before_it(temperature):
    model = _model()
    prompt = jax.random.randint(fresh_key(), (3, 5), 0, 64)
    key = fresh_key()
    free = np.asarray(decoding.generate(model, prompt, max_new_tokens=12, key=key, temperature=temperature))
    eos = int(free[0, 3])  # row 0 meets it at its 4th token at the latest
    stopped = np.asarray(
        decoding.generate(model, prompt, max_new_tokens=12, key=key, temperature=temperature, eos_token_id=eos)
    )
    ends = []
    for row_free, row_stopped in zip(free, stopped, strict=True):
        hits = np.flatnonzero(row_free == eos)
        end = hits[0] if hits.size else len(row_free) - 1
        np.testing.assert_array_equal(row_stopped[: end + 1], row_free[: end + 1])
        assert np.all(row_stopped[end + 1 :] == eos)
        ends.append(end if hits.size else None)
    # once every row is done the loop stops: the cache saw prompt + (last row's end + 1) tokens
    fed = 12 if None in ends else max(ends) + 1
    np.testing.assert_array_equal(np.asarray(model.tokens_seen[...]), 5 + fed)


def test_generate_eos_and_length_errors():
    model, prompt = _model(), jnp.ones((1, 3), jnp.int32)
    for bad in (-1, 64, 2.0, True):
        with pytest.raises(ValueError, match=r"eos_token_id must be a token id in \[0, vocab=64\)"):
            decoding.generate(model, prompt, max_new_tokens=2, eos_token_id=bad)
    with pytest.raises(ValueError, match=r"max_new_tokens must be >= 1 \(an int\); got 0"):
        decoding.generate(model, prompt, max_new_tokens=0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        decoding.generate(model, prompt, max_new_tokens=2, key=fresh_key(), temperature=1.0, top_p=2.0)
