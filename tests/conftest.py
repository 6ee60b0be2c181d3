"""Shared pytest set-up: GPU-marked tests are skipped, visibly, when JAX sees no GPU."""

import jax
import pytest


def _has_gpu() -> bool:
    try:
        return jax.default_backend() == "gpu"
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU; JAX sees only {jax.default_backend()} "
                                   "(run `make gpu-test` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
