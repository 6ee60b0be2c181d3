"""benchmarks/measure.py: the FLOP model behind the throughput script's MFU."""

import jax.numpy as jnp
import pytest

from cottention_jax.configs import train_preset


@pytest.mark.parametrize("attention", ["cosine", "softmax"])
def test_model_flops_agree_with_xla_cost_analysis(attention):
    """gpt_train_flops (the MFU numerator of train_throughput.py) against XLA's own FLOP count of the
    compiled step: within 8% for cosine (the chunked form executes what the model counts, plus the
    element-wise work); softmax's dense XLA path executes the whole T x T square, so XLA counts more."""
    from benchmarks.measure import gpt_train_flops  # noqa: PLC0415
    from cottention_jax.train import build_model, build_optimizer, make_train_step  # noqa: PLC0415

    seq, b = 512, 2
    cfg = train_preset("gpt-small", [f"model.attention={attention}", f"model.max_len={seq}"])
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.optim, cfg.steps)
    ids = jnp.ones((b, seq + 1), jnp.int32)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": jnp.ones((b, seq))}
    cost = make_train_step("gpt").lower(model, optimizer, batch).compile().cost_analysis()
    xla_flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ratio = xla_flops / gpt_train_flops(cfg.model, b, seq)
    assert (1.0 <= ratio <= 1.08) if attention == "cosine" else (1.0 <= ratio <= 1.3), ratio
