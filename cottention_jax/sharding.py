"""Multi-device training with `jax.sharding`: one named mesh axis, "data".

- "data": the batch is split over the devices; parameters and optimizer state
  are replicated.
- "fsdp": the batch is split as above and every parameter (and its optimizer
  state) is split too, along its largest dimension divisible by the device count;
  XLA inserts the gathers. Small arrays (< min_fsdp_size elements) stay replicated.

Test on a CPU with XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["batch_sharding", "make_mesh", "param_spec", "shard_training_state"]

AXIS = "data"


def make_mesh(kind: str) -> Mesh | None:
    """A 1-D mesh over all devices for "data"/"fsdp"; None for "none"."""
    if kind == "none":
        return None
    if kind not in ("data", "fsdp"):
        raise ValueError(f"sharding must be 'none', 'data' or 'fsdp'; got {kind!r}")
    return Mesh(np.array(jax.devices()), (AXIS,))


def param_spec(shape: tuple[int, ...], n_devices: int, fsdp: bool, min_fsdp_size: int = 2**12) -> PartitionSpec:
    """Where one array lives: replicated, or (fsdp) split on its largest dimension divisible by n_devices."""
    if not fsdp or int(np.prod(shape, dtype=np.int64)) < min_fsdp_size:
        return PartitionSpec()
    candidates = [(size, axis) for axis, size in enumerate(shape) if size % n_devices == 0]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)
    return PartitionSpec(*([None] * axis + [AXIS]))


def shard_training_state(model: nnx.Module, optimizer: nnx.Optimizer, mesh: Mesh, fsdp: bool) -> None:
    """Place the model's and optimizer's arrays on the mesh, in place."""
    n = mesh.devices.size

    def place(x):
        if not hasattr(x, "shape") or getattr(x, "ndim", 0) == 0:
            return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))
        return jax.device_put(x, NamedSharding(mesh, param_spec(x.shape, n, fsdp)))

    for node in (model, optimizer):
        nnx.update(node, jax.tree.map(place, nnx.state(node)))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (batch) axis over the devices."""
    return NamedSharding(mesh, PartitionSpec(AXIS))
