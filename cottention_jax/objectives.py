"""Training objectives: (model, batch) -> (mean loss, sums), on the batches of `cottention_jax.data`.

The sums ("loss_sum", "correct", "count", weighted) let evaluation over many
batches divide once: the exact mean over a split, padding excluded. The
cross-entropy itself is `models.common.weighted_cross_entropy`.
"""

from __future__ import annotations

from cottention_jax.models.common import weighted_cross_entropy

__all__ = ["LOSSES", "classification_objective", "gpt_objective", "mlm_objective"]


def gpt_objective(model, batch):
    """Next-token cross-entropy: inputs/targets/weights (B, T)."""
    return weighted_cross_entropy(model(batch["inputs"]), batch["targets"], batch["weights"])


def mlm_objective(model, batch):
    """Masked-token cross-entropy over the selected positions (mlm_weights)."""
    hidden = model(batch["input_ids"], segment_ids=batch["segment_ids"], padding_mask=batch["padding_mask"])
    return weighted_cross_entropy(model.mlm_logits(hidden), batch["mlm_labels"], batch["mlm_weights"])


def classification_objective(model, batch):
    """Sequence-classification cross-entropy from the [CLS] position; weights (B,) drop filler rows."""
    hidden = model(batch["input_ids"], segment_ids=batch["segment_ids"], padding_mask=batch["padding_mask"])
    logits = model.classify(hidden, batch["padding_mask"])
    return weighted_cross_entropy(logits, batch["labels"], batch["weights"])


LOSSES = {"gpt": gpt_objective, "bert-mlm": mlm_objective, "bert-classify": classification_objective}
