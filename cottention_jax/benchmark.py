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

__all__ = ["PEAK_BF16_FLOPS", "collectives", "compiled_bytes", "compiled_memory_bytes", "gpt_train_flops",
           "peak_flops", "describe_device", "device_peak_bytes", "host_memory_bytes",
           "median_time"]


# Dense bf16 tensor-core peak (FLOP/s) by device kind, from the vendors' data sheets; first match wins.
PEAK_BF16_FLOPS = (("H100 PCIe", 756e12), ("H100", 989e12), ("GH200", 989e12), ("H200", 989e12),
                   ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12))


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
    block = d_model * d * (2 * heads + 2 * kv) + 2 * d_model * config.ff_dim     # q, o; k, v; MLP
    head = d_model * config.vocab_size
    tokens = batch * seq
    matmuls = 6.0 * (layers * block + head) * tokens
    if config.attention == "softmax":
        attention = 2.0 * seq * seq * d * batch
    else:
        attention = (2.0 * seq * chunk * d + 4.0 * seq * d * d) * batch
    return matmuls + 3.0 * attention * heads * layers


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


_COLLECTIVE = re.compile(r"= (?P<shape>\([^()]*\)|\S+) (?P<op>all-gather|all-reduce|collective-permute|"
                         r"reduce-scatter|all-to-all)(?P<start>-start)?\(")
_ARRAY = re.compile(r"(?P<dtype>pred|[a-z]+\d+)\[(?P<dims>[\d,]*)\]")


def collectives(hlo_text: str) -> list[dict]:
    """The cross-device collectives of compiled HLO text (`jit(f).lower(...).compile().as_text()`).

    One dict per collective instruction: {"op", "bytes", "shape", "axes", "op_name"}, bytes
    being the size of its result per device (for an async "-start", its largest buffer; a
    tuple result counts all its arrays), axes the mesh axes its replica groups span when
    the HLO names them (`replica_groups=mesh[...] {'seq'}` -> ("seq",); else None), op_name
    the JAX source op of its metadata ("" if none; XLA's combined all-reduces keep one
    member's name only).
    """
    found = []
    for line in hlo_text.splitlines():
        m = _COLLECTIVE.search(line)
        if m is None:
            continue
        sizes = [int(np.prod([int(x) for x in a["dims"].split(",") if x], dtype=np.int64))
                 * (1 if a["dtype"] == "pred" else int(re.sub(r"\D", "", a["dtype"])) // 8)   # f32 -> 4 bytes
                 for a in _ARRAY.finditer(m["shape"])]
        name = re.search(r'op_name="([^"]*)"', line)
        groups = re.search(r"replica_groups=mesh\[[^\]]*\] \{([^}]*)\}", line)
        axes = tuple(a.strip(" '") for a in groups.group(1).split(",")) if groups else None
        found.append({"op": m["op"], "bytes": int(max(sizes) if m["start"] else sum(sizes)), "shape": m["shape"],
                      "axes": axes, "op_name": name.group(1) if name else ""})
    return found
