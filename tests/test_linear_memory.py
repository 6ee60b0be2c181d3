"""The xla path is linear in sequence length, forward and backward.

Two independent checks: no intermediate in the traced program is as large as
a seq x seq or seq x d x d array, and XLA's compiled temporary memory doubles
(not quadruples) when the sequence doubles.
"""

import jax
import jax.numpy as jnp
import pytest

import cottention_jax as ca
from tests._util import fresh_key, random_qkv


def _loss(impl, causal):
    def f(q, k, v, m):
        return jnp.sum(ca.cosine_attention(q, k, v, m, causal=causal, implementation=impl) ** 2)

    return jax.value_and_grad(f, argnums=(0, 1, 2, 3))


def _largest_intermediate(jaxpr) -> int:
    """Largest number of elements of any value produced anywhere in a (closed) jaxpr, sub-jaxprs included."""
    biggest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            shape = getattr(var.aval, "shape", ())
            size = 1
            for s in shape:
                size *= s
            biggest = max(biggest, size)
        for sub in _sub_jaxprs(eqn.params):
            biggest = max(biggest, _largest_intermediate(sub))
    return biggest


def _sub_jaxprs(params):
    for value in params.values():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


@pytest.mark.parametrize("causal", [True, False])
def test_no_quadratic_or_per_position_state_intermediates(causal):
    t, d = 2048, 32
    q, k, v, m = random_qkv(fresh_key(), 1, t, 1, 1, d, d)
    jaxpr = jax.make_jaxpr(_loss("xla", causal))(q, k, v, m).jaxpr
    largest = _largest_intermediate(jaxpr)
    assert largest < t * d * d // 4, largest  # far from a seq x d x d array (and seq x seq = 2x that)
    # The check itself can fail: the quadratic reference builds a seq x seq array.
    ref = jax.make_jaxpr(_loss("reference", causal))(q, k, v, m).jaxpr
    assert _largest_intermediate(ref) >= t * t


def _temp_bytes(t, causal):
    q, k, v, m = random_qkv(fresh_key(), 1, t, 2, 2, 32, 32)
    compiled = jax.jit(_loss("xla", causal)).lower(q, k, v, m).compile()
    analysis = compiled.memory_analysis()
    # No analysis means this test cannot measure, and the linear-memory claim would go unchecked:
    # a failure, not a skip (every jaxlib this package supports gives one on CPU and GPU).
    assert analysis is not None, f"the {jax.default_backend()} backend gave no compiled memory analysis"
    return analysis.temp_size_in_bytes + analysis.output_size_in_bytes


@pytest.mark.parametrize("causal", [True, False])
def test_compiled_memory_grows_linearly(causal):
    small, large = _temp_bytes(4096, causal), _temp_bytes(16384, causal)
    # 4x the sequence: linear memory gives ~4x bytes, quadratic would give ~16x.
    assert large <= 5 * small, (small, large)
