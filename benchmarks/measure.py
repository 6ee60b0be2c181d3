"""Measuring helpers shared by the benchmark scripts: synchronised median timings, FLOP models,
device peaks and the machine's description.

Timings follow one rule: warm up (compile) first, then time many synchronised
runs (`block_until_ready`) and report the median. Compiled memory (known before
anything runs) is library code: `cottention_jax.memory.compiled_memory_bytes`; so is what crosses
devices in a compiled program: `cottention_jax.sharding.collectives`.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax

__all__ = [
    "PEAK_BF16_FLOPS",
    "describe_device",
    "device_peak_bytes",
    "gpt_train_flops",
    "host_memory_bytes",
    "median_time",
    "peak_flops",
]


# Dense bf16 tensor-core peak (FLOP/s) by device kind, from the vendors' data sheets; first match wins.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
)


def peak_flops(device_kind: str, dtype) -> float | None:
    """The device's dense peak for 2-byte (bf16 / fp16) matmuls; None for other dtypes or unknown devices."""
    if jax.numpy.dtype(dtype).itemsize != 2:
        return None
    return next((flops for name, flops in PEAK_BF16_FLOPS if name in device_kind), None)


def gpt_train_flops(config, batch: int, seq: int, chunk: int = 64) -> float:
    """Model FLOPs of one GPT training step (forward + backward = 3x the forward), for MFU.

    Matmuls: 6 x (parameters in weight matmuls: the blocks and the LM head, tied or
    not; not the embedding lookup) x tokens. Attention, per layer and head (d = head dim), forward:
    causal softmax 2 T^2 d per sequence (Q K^T and P V, half the square each);
    cosine, chunked with C = `chunk`, 2 T C d (in-chunk Q K^T and P V) + 4 T d^2 (the
    K^T V state and Q S products). Recurrent-softmax variants are counted as cosine.
    """
    d_model, layers, heads = config.d_model, config.num_layers, config.num_heads
    kv = config.num_kv_heads or heads
    d = d_model // heads
    block = d_model * d * (2 * heads + 2 * kv) + 2 * d_model * config.ff_dim  # q, o; k, v; MLP
    head = d_model * config.vocab_size
    tokens = batch * seq
    matmuls = 6.0 * (layers * block + head) * tokens
    if config.attention == "softmax":
        attention = 2.0 * seq * seq * d * batch
    else:
        attention = (2.0 * seq * chunk * d + 4.0 * seq * d * d) * batch
    return matmuls + 3.0 * attention * heads * layers


def median_time(fn: Callable[..., Any], *args, warmup: int = 2, repeats: int = 10, max_seconds: float = 20.0) -> dict:
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
