"""Loss and metric sums for each training kind, on the batches of `cottention_jax.data`.

Every function maps (model, batch) -> (mean loss, sums) where sums holds
"loss_sum", "correct" and "count" (weighted), so evaluation over many batches
adds sums and divides once: the exact mean over the split, padding excluded.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

__all__ = ["LOSSES", "classification_objective", "gpt_objective", "mlm_objective"]


def _weighted(losses, correct, weights):
    weights = weights.astype(jnp.float32)
    count = weights.sum()
    loss_sum = (losses * weights).sum()
    sums = {"loss_sum": loss_sum, "correct": (correct * weights).sum(), "count": count}
    return loss_sum / jnp.maximum(count, 1.0), sums


def gpt_objective(model, batch):
    """Next-token cross-entropy: inputs/targets/weights (B, T)."""
    logits = model(batch["inputs"])                                            # (B, T, V) float32
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    correct = jnp.argmax(logits, -1) == batch["targets"]
    return _weighted(losses, correct, batch["weights"])


def mlm_objective(model, batch):
    """Masked-token cross-entropy over the selected positions (mlm_weights)."""
    hidden = model(batch["input_ids"], segment_ids=batch["segment_ids"], padding_mask=batch["padding_mask"])
    logits = model.mlm_logits(hidden)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["mlm_labels"])
    correct = jnp.argmax(logits, -1) == batch["mlm_labels"]
    return _weighted(losses, correct, batch["mlm_weights"])


def classification_objective(model, batch):
    """Sequence-classification cross-entropy from the [CLS] position; weights (B,) drop filler rows."""
    hidden = model(batch["input_ids"], segment_ids=batch["segment_ids"], padding_mask=batch["padding_mask"])
    logits = model.classify(hidden, batch["padding_mask"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
    correct = jnp.argmax(logits, -1) == batch["labels"]
    return _weighted(losses, correct, batch["weights"])


LOSSES = {"gpt": gpt_objective, "bert-mlm": mlm_objective, "bert-classify": classification_objective}
