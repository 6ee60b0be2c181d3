"""The models' old loss helpers, kept as deprecated aliases: losses live in `cottention_jax.objectives`
(per batch: `gpt_objective`, `mlm_objective`, `classification_objective`) over the cross-entropies
of `cottention_jax.losses`. Each function warns (DeprecationWarning) and gives what it gave before.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp

from cottention_jax.losses import weighted_cross_entropy

# name -> (module that defined it, what to use instead)
DEPRECATED_LOSSES = {
    "lm_loss": ("gpt", "cottention_jax.objectives.gpt_objective(model, batch)[0] or "
                       "cottention_jax.losses.weighted_cross_entropy(logits, targets, weights)[0]"),
    "perplexity": ("gpt", "jnp.exp(loss) or cottention_jax.metrics.safe_exp(loss)"),
    "mlm_loss": ("bert", "cottention_jax.objectives.mlm_objective(model, batch)[0] or "
                         "cottention_jax.losses.weighted_cross_entropy(logits, labels, weights)[0]"),
    "classification_loss": ("bert", "cottention_jax.objectives.classification_objective(model, batch)[0] or "
                                    "cottention_jax.losses.weighted_cross_entropy(logits, labels)[0]"),
}


def _warn(name: str) -> None:
    warnings.warn(f"cottention_jax.models.{name} is deprecated: use {DEPRECATED_LOSSES[name][1]}",
                  DeprecationWarning, stacklevel=3)


def lm_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Deprecated. Mean next-token cross-entropy (nats): logits (B, T, V), targets (B, T) int, weights (B, T)."""
    _warn("lm_loss")
    return weighted_cross_entropy(logits, targets, weights)[0]


def perplexity(mean_loss) -> jax.Array:
    """Deprecated. exp(mean cross-entropy in nats)."""
    _warn("perplexity")
    return jnp.exp(mean_loss)


def mlm_loss(logits: jax.Array, labels: jax.Array, weights: jax.Array) -> jax.Array:
    """Deprecated. Mean cross-entropy over the selected positions: logits (B, T, V), labels/weights (B, T)."""
    _warn("mlm_loss")
    return weighted_cross_entropy(logits, labels, weights)[0]


def classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Deprecated. Mean cross-entropy: logits (B, C), labels (B,) int."""
    _warn("classification_loss")
    return weighted_cross_entropy(logits, labels)[0]


def module_getattr(module: str):
    """A module `__getattr__` giving the deprecated losses that `module` ("gpt", "bert", None: all) had."""

    def __getattr__(name: str):
        if name in DEPRECATED_LOSSES and module in (None, DEPRECATED_LOSSES[name][0]):
            return globals()[name]
        raise AttributeError(f"module 'cottention_jax.models{'.' + module if module else ''}' has no "
                             f"attribute {name!r}")

    return __getattr__
