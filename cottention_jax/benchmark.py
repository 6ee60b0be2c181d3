"""Measuring helpers shared by the experiment scripts: synchronised median timings and memory.

Timings follow one rule: warm up (compile) first, then time many synchronised
runs (`block_until_ready`) and report the median.
"""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from typing import Any, Callable

import jax
import numpy as np

__all__ = ["collectives", "compiled_bytes", "compiled_memory_bytes", "describe_device", "device_peak_bytes", "host_memory_bytes",
           "median_time"]


def median_time(fn: Callable[..., Any], *args, warmup: int = 2, repeats: int = 10,
                max_seconds: float = 20.0) -> dict:
    """Median wall time of `fn(*args)` in seconds, synchronised on every output.

    Runs `warmup` untimed calls, then up to `repeats` timed ones, stopping early
    (after at least 3) once `max_seconds` of timed work has been spent.
    """
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times: list[float] = []
    while len(times) < repeats and (len(times) < 3 or sum(times) < max_seconds):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def compiled_memory_bytes(jitted: Callable[..., Any], *args) -> int | None:
    """XLA's buffer assignment for one call: arguments + outputs + temporaries, in bytes.

    Known before running (so a program that cannot fit need not be run), and
    the same figure on every backend; None where the backend gives no analysis.
    """
    return compiled_bytes(jitted.lower(*args).compile())


def compiled_bytes(compiled) -> int | None:
    """`compiled_memory_bytes` of an already compiled executable (`jit(f).lower(...).compile()`)."""
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def device_peak_bytes(device: jax.Device | None = None) -> int | None:
    """Peak bytes in use reported by the device allocator (GPU); None where not reported (CPU)."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return None if not stats else stats.get("peak_bytes_in_use")


def host_memory_bytes() -> int:
    """Physical memory of this machine in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def describe_device() -> dict:
    """Device kind, platform, core count and library versions, for results files."""
    dev = jax.devices()[0]
    return {
        "device": dev.device_kind if dev.platform != "cpu" else f"CPU ({platform.processor() or platform.machine()})",
        "platform": dev.platform,
        "device_count": jax.device_count(),
        "cpu_cores": os.cpu_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
    }


_COLLECTIVE = re.compile(r"= (?P<shape>\([^=]*?\)|\S+) (?P<op>all-gather|all-reduce|collective-permute|"
                         r"reduce-scatter|all-to-all)(?P<start>-start)?\(")
_ARRAY = re.compile(r"(?P<dtype>pred|[a-z]+\d+)\[(?P<dims>[\d,]*)\]")


def collectives(hlo_text: str) -> list[dict]:
    """The cross-device collectives of compiled HLO text (`jit(f).lower(...).compile().as_text()`).

    One dict per collective instruction: {"op", "bytes", "shape"}, bytes being the
    size of its result per device (for an async "-start", its largest buffer; a
    tuple result counts all its arrays).
    """
    found = []
    for m in _COLLECTIVE.finditer(hlo_text):
        sizes = [int(np.prod([int(x) for x in a["dims"].split(",") if x], dtype=np.int64))
                 * (1 if a["dtype"] == "pred" else int(re.sub(r"\D", "", a["dtype"])) // 8)   # f32 -> 4 bytes
                 for a in _ARRAY.finditer(m["shape"])]
        found.append({"op": m["op"], "bytes": int(max(sizes) if m["start"] else sum(sizes)), "shape": m["shape"]})
    return found
