"""What a program needs in memory, from XLA's compiled buffer assignment; nothing runs.

`compiled_memory_bytes(jitted, *args)` is the figure for any jitted function (arguments +
outputs + temporaries, known before the call, so a program that cannot fit need not run).

`train_step_memory(config, batch_size, seq_len)` builds the model and optimizer
abstractly (`nnx.eval_shape`: shapes only, no parameter arrays), lowers and
compiles `train.make_train_step(config.kind)` for the default backend, and
reads `memory_analysis()`. With a `mesh` (`cottention_jax.sharding.make_mesh`)
the step is compiled for it (the batch split over "data" and "seq", the state
replicated or fsdp-split as in training), and the figures are per device. On the CPU
backend this over-states a GPU's figure (different fusion and scheduling), but it moves
with every saving, so it is the yardstick for remat and the chunked loss when no GPU is at hand.
"""

from __future__ import annotations

import contextlib
import time

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding

from cottention_jax.configs import TrainConfig
from cottention_jax.sharding import batch_sharding, param_spec
from cottention_jax.train import build_model, build_optimizer, make_train_step

__all__ = ["abstract_batch", "compile_train_step", "compiled_bytes", "compiled_memory_bytes", "train_step_memory"]


def abstract_batch(config: TrainConfig, batch_size: int, seq_len: int) -> dict:
    """ShapeDtypeStructs of one training batch of `config.kind` (as cottention_jax.data makes them)."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"batch_size and seq_len must be >= 1; got batch_size={batch_size}, seq_len={seq_len}")
    ids = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.int32)
    weights = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.float32)
    if config.kind == "gpt":
        return {"inputs": ids, "targets": ids, "weights": weights}
    if config.kind == "bert-mlm":
        mask = jax.ShapeDtypeStruct((batch_size, seq_len), jnp.bool_)
        return {"input_ids": ids, "segment_ids": ids, "padding_mask": mask, "mlm_labels": ids, "mlm_weights": weights}
    raise ValueError(f"train_step_memory covers kind 'gpt' and 'bert-mlm'; got kind={config.kind!r}")


def _place(node, mesh, fsdp: bool) -> None:
    """Give every abstract array of an nnx node the sharding training would (sharding.shard_training_state)."""
    n = mesh.shape["data"]

    def place(x):
        spec = param_spec(x.shape, n, fsdp) if getattr(x, "ndim", 0) else jax.sharding.PartitionSpec()
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))

    nnx.update(node, jax.tree.map(place, nnx.state(node)))


def compile_train_step(config: TrainConfig, batch_size: int, seq_len: int, mesh=None):
    """The compiled jitted optimizer step of `config` on abstract (batch_size, seq_len) inputs, and the
    seconds lowering + compilation took. With `mesh`, compiled for it under `jax.set_mesh`."""
    batch = abstract_batch(config, batch_size, seq_len)
    model = nnx.eval_shape(lambda: build_model(config))
    optimizer = nnx.eval_shape(lambda: build_optimizer(build_model(config), config.optim, config.steps))
    if mesh is not None:
        for node in (model, optimizer):
            _place(node, mesh, fsdp=config.sharding == "fsdp")
        batch = {
            k: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=batch_sharding(mesh, x.ndim)) for k, x in batch.items()
        }
    start = time.perf_counter()
    with contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh):
        compiled = make_train_step(config.kind).lower(model, optimizer, batch).compile()
    return compiled, time.perf_counter() - start


def train_step_memory(config: TrainConfig, batch_size: int, seq_len: int, mesh=None) -> dict:
    """Compiled memory of one jitted optimizer step of `config` on (batch_size, seq_len) tokens.

    Returns bytes (per device, with a mesh): "arguments" (parameters, optimizer state,
    batch), "outputs" (the updated state: the step does not donate its inputs),
    "temporaries" (activations, gradients, workspace), "total" (their sum less aliased
    buffers), and "compile_s" (lowering + compilation seconds).
    """
    compiled, seconds = compile_train_step(config, batch_size, seq_len, mesh)
    analysis = compiled.memory_analysis()
    if analysis is None:
        raise RuntimeError(f"the {jax.default_backend()} backend gives no compiled memory analysis")
    parts = {
        "arguments": analysis.argument_size_in_bytes,
        "outputs": analysis.output_size_in_bytes,
        "temporaries": analysis.temp_size_in_bytes,
    }
    total = sum(parts.values()) - analysis.alias_size_in_bytes
    return {**{k: int(v) for k, v in parts.items()}, "total": int(total), "compile_s": seconds}


def compiled_memory_bytes(jitted: jax.stages.Wrapped, *args) -> int | None:
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
    return int(
        analysis.argument_size_in_bytes
        + analysis.output_size_in_bytes
        + analysis.temp_size_in_bytes
        - analysis.alias_size_in_bytes
    )
