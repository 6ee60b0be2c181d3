"""Deprecated: `RecurrentSoftmaxAttention` lives in `cottention_jax.layers` with the other layers.

`from cottention_jax.rnn_attention import RecurrentSoftmaxAttention` still works and warns;
import it from `cottention_jax.layers` (or `cottention_jax.layers.recurrent_softmax`).
"""

from __future__ import annotations

import warnings

__all__ = ["RecurrentSoftmaxAttention"]


def __getattr__(name: str):
    if name == "RecurrentSoftmaxAttention":
        warnings.warn("cottention_jax.rnn_attention is deprecated: import RecurrentSoftmaxAttention from "
                      "cottention_jax.layers", DeprecationWarning, stacklevel=2)
        from cottention_jax.layers.recurrent_softmax import RecurrentSoftmaxAttention  # noqa: PLC0415

        return RecurrentSoftmaxAttention
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
