"""Shared pytest set-up: float32 matmul precision, per-test random keys, GPU tests skipped visibly off-GPU.

Matmul precision. Most of this suite checks that two forms of one computation
agree (the quadratic reference, the chunked scan, the RNN steps, a decode loop,
a model's parallel and stepwise logits) to ~1e-5 in float32. That tolerance is
about the algorithms, and it only means something when every float32 matmul on
both sides really is float32. On an H100, JAX's default precision for float32
matmuls is TF32 (operands rounded to 10 mantissa bits, unit roundoff 2^-11 =
4.9e-4); the projections of the layers and models then carry relative errors of
~5e-4 that differ between the two sides, and 21 comparisons failed there at 1e-5
(all passed with precision "highest"). So the suite pins float32 matmuls to full
precision (`jax_default_matmul_precision="highest"`) on every backend: on CPU
this changes nothing (XLA:CPU computes float32 dots in float32 anyway); on a GPU
it makes the float32 comparisons test what they claim. Loosening every
tolerance to TF32's ~1e-3 instead would hide real float32 bugs ten times larger
than the ones these tests can now see.

The library itself does not pin anything: users keep JAX's default (TF32 on
GPUs) or choose their own. That default configuration is tested explicitly,
with a tolerance derived from TF32's roundoff, in `test_decoding.py::
test_stepwise_logits_under_tf32_matmuls_stay_within_tf32_error` (on CPU the
setting has no effect, and the check degenerates to the float32 one).
bf16 / fp16 comparisons keep their own looser tolerances everywhere.
"""

import itertools
import zlib

import jax
import pytest

from tests import _util

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True)
def _fresh_keys_seeded_by_test(request):
    """Every test draws its fresh keys from a sequence seeded by its own name, so its inputs are
    the same whatever ran before it (alone, in the suite, or on a pytest-xdist worker) and a
    failure reproduces with `pytest <that test>`; different tests still get different inputs."""
    _util._counter = itertools.count(zlib.crc32(request.node.nodeid.encode()) % 2**30)


def _has_gpu() -> bool:
    try:
        return jax.default_backend() == "gpu"
    except RuntimeError:
        return False


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(
        reason=f"needs a CUDA GPU; JAX sees only {jax.default_backend()} (run `make gpu-test` on a GPU machine)"
    )
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
