"""Cross-entropies (cottention_jax.losses): the float64 definition, chunks, weights, memory, errors.

The objectives with the chunked loss on the models: tests/models/test_models.py.

Tolerances: 1e-5 relative. Every form computes the same float32 per-position
losses; they differ only in the order of float32 sums (per chunk, then across
chunks; gradients of the head accumulated chunk by chunk), which moves results
by a few float32 epsilons (1.2e-7) times log of the number of terms, about 1e-6
here. A real fault (a chunk dropped, a padded position counted, a weight lost)
moves them by 1e-2 or more.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cottention_jax.losses import chunked_cross_entropy, weighted_cross_entropy
from tests._util import fresh_key, rel_error


def _numpy_sums(logits, labels, weights):
    """The float64 definition: -log softmax(logits)[label], weighted; argmax hits, weighted."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
    y, w = np.asarray(labels), np.asarray(weights, np.float64)
    nll = -np.take_along_axis(log_probs, y[..., None], -1)[..., 0]
    hits = (np.asarray(logits).argmax(-1) == y).astype(np.float64)
    return {"loss_sum": (nll * w).sum(), "correct": (hits * w).sum(), "count": w.sum()}


def _head_problem(b=3, t=11, d=8, v=37):
    """hidden (b, t, d), a linear head W (d, v) + c, labels, weights with zeros."""
    ks = jax.random.split(fresh_key(), 5)
    hidden = jax.random.normal(ks[0], (b, t, d))
    w, c = jax.random.normal(ks[1], (d, v)), jax.random.normal(ks[2], (v,))
    labels = jax.random.randint(ks[3], (b, t), 0, v)
    weights = jax.random.bernoulli(ks[4], 0.6, (b, t)).astype(jnp.float32) * 2.0  # 0 or 2
    return hidden, (w, c), labels, weights


def _head(params, h):
    w, c = params
    return h @ w + c


def test_weighted_cross_entropy_matches_the_float64_definition():
    hidden, params, labels, weights = _head_problem()
    logits = _head(params, hidden)
    mean, sums = weighted_cross_entropy(logits, labels, weights)
    ref = _numpy_sums(logits, labels, weights)
    for k in ref:
        assert abs(float(sums[k]) - ref[k]) <= 1e-5 * max(abs(ref[k]), 1.0), k
    assert abs(float(mean) - ref["loss_sum"] / ref["count"]) <= 1e-5 * ref["loss_sum"] / ref["count"]
    ones = weighted_cross_entropy(logits, labels)[1]
    assert float(ones["count"]) == labels.size


# 3 rows of 11: a chunk holds max(chunk // 3, 1) positions per row; 7 -> 2 leaves a padded tail; 33 and
# more: one chunk
@pytest.mark.parametrize("chunk", [1, 4, 7, 33, 10_000])
def test_chunked_cross_entropy_equals_the_plain_loss_and_its_gradients(chunk):
    hidden, params, labels, weights = _head_problem()

    def plain(h, p):
        return weighted_cross_entropy(_head(p, h), labels, weights)

    def chunked(h, p):
        return chunked_cross_entropy(h, labels, weights, lambda x: _head(p, x), chunk)

    (mean, sums), grads = jax.value_and_grad(chunked, argnums=(0, 1), has_aux=True)(hidden, params)
    (ref_mean, ref_sums), ref_grads = jax.value_and_grad(plain, argnums=(0, 1), has_aux=True)(hidden, params)
    expected = _numpy_sums(_head(params, hidden), labels, weights)
    for k in expected:  # padding to the chunk multiple never counts
        assert abs(float(sums[k]) - expected[k]) <= 1e-5 * max(abs(expected[k]), 1.0), k
    assert rel_error(mean, ref_mean) <= 1e-5
    for g, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        assert rel_error(g, ref) <= 1e-5


def test_chunked_cross_entropy_of_one_row_and_of_rank_three_labels():
    hidden, params, labels, weights = _head_problem(b=2, t=12)
    head = lambda x: _head(params, x)  # noqa: E731
    expected = _numpy_sums(head(hidden), labels, weights)
    for h, y, w in (
        (hidden.reshape(24, -1), labels.reshape(24), weights.reshape(24)),  # (N,)
        (hidden.reshape(2, 3, 4, -1), labels.reshape(2, 3, 4), weights.reshape(2, 3, 4)),
    ):
        sums = chunked_cross_entropy(h, y, w, head, 5)[1]
        for k in expected:
            assert abs(float(sums[k]) - expected[k]) <= 1e-5 * max(abs(expected[k]), 1.0), k


def test_chunked_cross_entropy_ignores_weight_zero_positions():
    hidden, params, labels, weights = _head_problem()
    zero = weights == 0
    other_labels = jnp.where(zero, (labels + 5) % 37, labels)
    other_hidden = jnp.where(zero[..., None], 100.0 * jax.random.normal(fresh_key(), hidden.shape), hidden)
    head = lambda x: _head(params, x)  # noqa: E731
    a = chunked_cross_entropy(hidden, labels, weights, head, 5)[1]
    b = chunked_cross_entropy(other_hidden, other_labels, weights, head, 5)[1]
    for k in a:
        assert abs(float(a[k]) - float(b[k])) <= 1e-5 * max(abs(float(a[k])), 1.0), k


def test_chunked_cross_entropy_keeps_only_one_chunk_of_logits_for_the_backward_pass():
    # 4096 positions x 2048 classes: 32 MiB of float32 logits; in chunks of 256, 2 MiB at a time
    n, d, v, chunk = 4096, 32, 2048, 256
    hidden = jax.ShapeDtypeStruct((n, d), jnp.float32)
    head = (jax.ShapeDtypeStruct((d, v), jnp.float32), jax.ShapeDtypeStruct((v,), jnp.float32))
    labels = jax.ShapeDtypeStruct((n,), jnp.int32)

    def temp_bytes(loss):
        fn = jax.jit(jax.grad(lambda h, p, y: loss(h, p, y)[0], argnums=(0, 1)))
        return fn.lower(hidden, head, labels).compile().memory_analysis().temp_size_in_bytes

    plain = temp_bytes(lambda h, p, y: weighted_cross_entropy(_head(p, h), y))
    chunked = temp_bytes(lambda h, p, y: chunked_cross_entropy(h, y, None, lambda x: _head(p, x), chunk))
    logits_bytes = n * v * 4
    assert plain >= logits_bytes  # the plain loss holds all float32 logits
    assert chunked < logits_bytes / 4  # the chunked one a few chunks' worth at most


def test_loss_input_errors():
    hidden, params, labels, weights = _head_problem()
    head = lambda x: _head(params, x)  # noqa: E731
    for bad in (0, -3, 2.5, True, None):
        with pytest.raises(ValueError, match=r"chunk must be an int >= 1"):
            chunked_cross_entropy(hidden, labels, weights, head, bad)
    with pytest.raises(ValueError, match=r"hidden must have shape labels.shape \+ \(d,\) with labels of rank >= 1"):
        chunked_cross_entropy(hidden[:, :5], labels, weights, head, 4)
    with pytest.raises(ValueError, match=r"weights must have the shape of labels \(3, 11\)"):
        chunked_cross_entropy(hidden, labels, weights[:, :5], head, 4)
    with pytest.raises(ValueError, match=r"logits must have shape labels.shape \+ \(V,\)"):
        weighted_cross_entropy(head(hidden)[:, :4], labels)


def test_public_api_of_losses_and_objectives_is_pinned():
    from cottention_jax import losses, objectives

    assert losses.__all__ == ["chunked_cross_entropy", "weighted_cross_entropy"]
    assert set(objectives.__all__) == {"LOSSES", "classification_objective", "gpt_objective", "mlm_objective"}
    assert set(objectives.LOSSES) == {"gpt", "bert-mlm", "bert-classify"}
