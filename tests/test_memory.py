"""Compiled memory of a training step (cottention_jax.memory): remat and the chunked loss lower it.

XLA's buffer assignment is a deterministic property of the compiled program, so
these are exact comparisons of one program against another, not timings.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

from cottention_jax.configs import train_preset
from cottention_jax.memory import abstract_batch, train_step_memory

REPO = Path(__file__).resolve().parents[1]
BATCH, SEQ, VOCAB, CHUNK = 8, 128, 2048, 256


def _memory(*overrides):
    config = train_preset("gpt-tiny", [f"model.vocab_size={VOCAB}", f"model.max_len={SEQ}", *overrides])
    return train_step_memory(config, BATCH, SEQ)


def test_remat_and_the_chunked_loss_lower_the_compiled_step_memory():
    plain, block, dots = _memory(), _memory("model.remat=block"), _memory("model.remat=dots")
    chunked = _memory(f"model.loss_chunk={CHUNK}")
    # the step's state is the same in every program: parameters and AdamW moments in, updated out
    assert plain["arguments"] == block["arguments"] == dots["arguments"] == chunked["arguments"]
    assert plain["outputs"] == chunked["outputs"]
    # block keeps only each block's input, dots also the matmul outputs, none everything
    assert block["temporaries"] < dots["temporaries"] < plain["temporaries"]
    # the plain loss holds the (B*T, V) float32 logits; the chunked one a chunk of them
    logits_saved = (BATCH * SEQ - CHUNK) * VOCAB * 4
    assert plain["total"] - chunked["total"] >= logits_saved
    assert plain["total"] == plain["arguments"] + plain["outputs"] + plain["temporaries"]


def test_abstract_batch_shapes_and_errors():
    bert = train_preset("bert-tiny")
    batch = abstract_batch(bert, 2, 16)
    assert set(batch) == {"input_ids", "segment_ids", "padding_mask", "mlm_labels", "mlm_weights"}
    assert all(v.shape == (2, 16) for v in batch.values())
    with pytest.raises(ValueError, match=r"batch_size and seq_len must be >= 1; got batch_size=0"):
        abstract_batch(train_preset("gpt-tiny"), 0, 16)
    classify = dataclasses.replace(bert, kind="bert-classify", data=dataclasses.replace(bert.data, task="sentiment"))
    with pytest.raises(ValueError, match=r"covers kind 'gpt' and 'bert-mlm'; got kind='bert-classify'"):
        abstract_batch(classify, 2, 16)


def test_train_memory_script_tabulates(tmp_path):
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_memory.py"), "--preset", "gpt-tiny",
                          "--tokens", "256", "--rows", "cosine:64:block:48", "--out", str(tmp_path)],
                         check=True, capture_output=True, text=True)
    assert "| cosine | 64 | 4 | 256 | block | 48 |" in run.stdout
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [(r["seq"], r["batch"], r["remat"], r["loss_chunk"]) for r in rows] == [(64, 4, "block", 48)]
    expected = train_step_memory(train_preset("gpt-tiny", ["model.vocab_size=512", "model.remat=block",
                                                           "model.loss_chunk=48", "model.max_len=64"]), 4, 64)
    assert rows[0]["total"] == expected["total"]      # the data's vocabulary (512), as training uses


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


def test_the_old_benchmark_module_forwards_with_a_deprecation_warning():
    """cottention_jax.benchmark (named by an earlier notebook) still resolves its names, with a warning."""
    import cottention_jax.benchmark as old  # noqa: PLC0415
    from cottention_jax import memory, sharding  # noqa: PLC0415
    with pytest.warns(DeprecationWarning, match="moved to cottention_jax.memory.compiled_memory_bytes"):
        assert old.compiled_memory_bytes is memory.compiled_memory_bytes
    with pytest.warns(DeprecationWarning, match="moved to cottention_jax.sharding.collectives"):
        assert old.collectives is sharding.collectives
