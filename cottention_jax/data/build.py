"""Deprecated alias of `cottention_jax.data.fetch` (renamed in issue 13: `build` and `builders`
differed by one letter; this module fetches from package registries, `builders` holds the TFDS
builders). Importing it warns; every name resolves to `fetch`'s."""

from __future__ import annotations

import warnings

from cottention_jax.data import fetch as _fetch
from cottention_jax.data.fetch import *  # noqa: F401,F403

warnings.warn("cottention_jax.data.build is now cottention_jax.data.fetch", DeprecationWarning, stacklevel=2)

__all__ = list(_fetch.__all__)


def __getattr__(name: str):
    return getattr(_fetch, name)
