"""Deprecated: the measuring helpers moved out of the library.

`compiled_memory_bytes` and `compiled_bytes` are now `cottention_jax.memory`'s, `collectives`
is `cottention_jax.sharding`'s; the timing, FLOP and device helpers (`median_time`,
`describe_device`, `gpt_train_flops`, ...) live in the repository's `benchmarks/measure.py`, which is not installed. Names looked
up here still resolve (from a checkout, for the latter), with a DeprecationWarning.
"""

from __future__ import annotations

import importlib
import warnings

_IN_LIBRARY = {"compiled_bytes": "cottention_jax.memory", "compiled_memory_bytes": "cottention_jax.memory",
               "collectives": "cottention_jax.sharding"}
_IN_BENCHMARKS = ("PEAK_BF16_FLOPS", "describe_device", "device_peak_bytes", "gpt_train_flops",
                  "host_memory_bytes", "median_time", "peak_flops")
__all__: list[str] = []   # nothing new is exported from here


def __getattr__(name: str):
    if name in _IN_LIBRARY:
        home = _IN_LIBRARY[name]
    elif name in _IN_BENCHMARKS:
        home = "benchmarks.measure"
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(f"cottention_jax.benchmark.{name} moved to {home}.{name}; import it from there",
                  DeprecationWarning, stacklevel=2)
    try:
        module = importlib.import_module(home)
    except ImportError as err:
        raise ImportError(f"cottention_jax.benchmark.{name} moved to the repository's benchmarks/measure.py, "
                          "which is not installed: run from a checkout of cottention-jax") from err
    return getattr(module, name)
