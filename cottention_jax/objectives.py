"""Training objectives: (model, batch) -> (mean loss, sums), on the batches of `cottention_jax.data`.

The sums ("loss_sum", "correct", "count", weighted) let evaluation over many
batches divide once: the exact mean over a split, padding excluded. The
cross-entropies are in `cottention_jax.losses`; with `model.config.loss_chunk`
> 0 the language-model heads (GPT, BERT MLM) run through `chunked_cross_entropy`,
which never holds the (B, T, V) float32 logits at once. The classification objective also
returns its rows' predictions, labels and weights (for the task metrics of `train_hooks.evaluate`),
and is a regression (MSE) when the model has num_labels == 1.
"""

from __future__ import annotations

import jax.numpy as jnp

from cottention_jax.losses import chunked_cross_entropy, weighted_cross_entropy

__all__ = ["LOSSES", "classification_objective", "gpt_objective", "mlm_objective"]


def _head_cross_entropy(model, hidden, labels, weights, head_fn):
    """Cross-entropy of head_fn(hidden) (B, T, V): whole, or chunked as model.config.loss_chunk says."""
    chunk = model.config.loss_chunk
    if chunk:
        return chunked_cross_entropy(hidden, labels, weights, head_fn, chunk)
    return weighted_cross_entropy(head_fn(hidden), labels, weights)


def gpt_objective(model, batch):
    """Next-token cross-entropy: inputs/targets/weights (B, T)."""
    hidden = model.hidden(batch["inputs"])
    return _head_cross_entropy(model, hidden, batch["targets"], batch["weights"], model.logits)


def mlm_objective(model, batch):
    """Masked-token cross-entropy over the selected positions (mlm_weights)."""
    hidden = model(batch["input_ids"], segment_ids=batch["segment_ids"], padding_mask=batch["padding_mask"])
    return _head_cross_entropy(model, hidden, batch["mlm_labels"], batch["mlm_weights"], model.mlm_logits)


def classification_objective(model, batch):
    """Sequence classification from the [CLS] position; weights (B,) drop filler rows.

    num_labels > 1: cross-entropy of the logits (B, C) against labels (B,) int.
    num_labels == 1 (regression): squared error of the single output against labels (B,) float,
    "correct" 0. Besides the sums, the aux dict holds the rows the metrics need:
    "predictions" (B,) (the argmax class, int32; the output itself for regression, float32),
    "labels" (B,) and "weights" (B,) as given.
    """
    hidden = model(batch["input_ids"], segment_ids=batch["segment_ids"], padding_mask=batch["padding_mask"])
    logits = model.classify(hidden, batch["padding_mask"])
    weights = batch["weights"].astype(jnp.float32)
    if logits.shape[-1] == 1:
        predictions = logits[:, 0]
        errors = (predictions - batch["labels"].astype(jnp.float32)) ** 2
        sums = {"loss_sum": (errors * weights).sum(), "correct": jnp.zeros((), jnp.float32), "count": weights.sum()}
        loss = sums["loss_sum"] / jnp.maximum(sums["count"], 1.0)
    else:
        loss, sums = weighted_cross_entropy(logits, batch["labels"], weights)
        predictions = jnp.argmax(logits, -1).astype(jnp.int32)
    return loss, {**sums, "predictions": predictions, "labels": batch["labels"], "weights": weights}


LOSSES = {"gpt": gpt_objective, "bert-mlm": mlm_objective, "bert-classify": classification_objective}
