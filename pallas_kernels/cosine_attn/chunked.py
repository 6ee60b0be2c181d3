"""Deprecated alias of `pallas_kernels.cosine_attn.pallas` (the Pallas kernels' module, renamed in issue 13).

`chunked.causal_linear_attention` is `pallas.causal_linear_attention_pallas`; every other name
(`BlockSizes`, `KernelLaunch`, ...) resolves to the same object in `pallas`. Importing this
module warns once.
"""

from __future__ import annotations

import warnings

from pallas_kernels.cosine_attn import pallas as _pallas

warnings.warn("pallas_kernels.cosine_attn.chunked is now pallas_kernels.cosine_attn.pallas "
              "(and causal_linear_attention is causal_linear_attention_pallas)", DeprecationWarning, stacklevel=2)

__all__ = ["BlockSizes", "KernelLaunch", "causal_linear_attention"]

BlockSizes = _pallas.BlockSizes
KernelLaunch = _pallas.KernelLaunch
causal_linear_attention = _pallas.causal_linear_attention_pallas


def __getattr__(name: str):
    return getattr(_pallas, name)
