"""Multi-device training with `jax.sharding`: a ("data", "seq") mesh.

- "data": the batch is split over the "data" axis; parameters and optimizer
  state are replicated.
- "fsdp": the batch is split as above and every parameter (and its optimizer
  state) is split too over "data", along its largest dimension divisible by that
  axis; XLA inserts the gathers. Small arrays (< min_fsdp_size elements) stay replicated.
- seq_parallel = S > 1 (with either): the devices form a (N / S) x S mesh and
  every (batch, seq, ...) array is split over "seq" along its sequence axis too.
  Cosine attention then runs sequence-parallel (`cottention_jax.parallel`: only
  d x d states cross devices); everything else is position-wise, so XLA keeps it
  local. Train with `jax.set_mesh(mesh)` active, so the attention op finds the axis.

`collectives(hlo_text)` lists what a compiled program sends between devices (op, bytes, mesh
axes), to check that only those states cross.

Test on a CPU with XLA_FLAGS=--xla_force_host_platform_device_count=8.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "AXIS",
    "SEQ_AXIS",
    "batch_sharding",
    "collectives",
    "make_mesh",
    "param_spec",
    "place_batch",
    "shard_training_state",
]

AXIS, SEQ_AXIS = "data", "seq"


def make_mesh(kind: str, seq_parallel: int = 1, devices=None) -> Mesh | None:
    """A (devices / seq_parallel, seq_parallel) mesh, axes ("data", "seq"), for "data"/"fsdp"
    over `devices` (default: all of them); None for "none"."""
    if kind == "none":
        if seq_parallel != 1:
            raise ValueError(f"seq_parallel={seq_parallel} needs sharding='data' or 'fsdp'; got sharding='none'")
        return None
    if kind not in ("data", "fsdp"):
        raise ValueError(f"sharding must be 'none', 'data' or 'fsdp'; got {kind!r}")
    devices = list(jax.devices() if devices is None else devices)
    if seq_parallel < 1 or len(devices) % seq_parallel:
        raise ValueError(f"seq_parallel must divide the {len(devices)} devices; got seq_parallel={seq_parallel}")
    if jax.process_count() > 1 and jax.local_device_count() % seq_parallel:
        # each process feeds whole sequences of its rows: a sequence may not span processes
        raise ValueError(
            f"seq_parallel ({seq_parallel}) must divide the {jax.local_device_count()} devices of each "
            f"process in a multi-process run"
        )
    return Mesh(np.array(devices).reshape(len(devices) // seq_parallel, seq_parallel), (AXIS, SEQ_AXIS))


def param_spec(shape: tuple[int, ...], n_devices: int, fsdp: bool, min_fsdp_size: int = 2**12) -> PartitionSpec:
    """Where one array lives: replicated, or (fsdp) split on its largest dimension divisible by n_devices."""
    if not fsdp or int(np.prod(shape, dtype=np.int64)) < min_fsdp_size:
        return PartitionSpec()
    candidates = [(size, axis) for axis, size in enumerate(shape) if size % n_devices == 0]
    if not candidates:
        return PartitionSpec()
    _, axis = max(candidates)
    return PartitionSpec(*([None] * axis + [AXIS]))


def _put(x, sharding: NamedSharding):
    """`x` (the same value in every process) as a global array with `sharding`. In a multi-process run the
    mesh has devices of other processes, which device_put cannot reach: each process then gives the
    shards of its own devices, cut from its copy."""
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # typed PRNG keys: place their data
        return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_training_state(model: nnx.Module, optimizer: nnx.Optimizer, mesh: Mesh, fsdp: bool) -> None:
    """Place the model's and optimizer's arrays on the mesh, in place (fsdp: split over "data")."""
    n = mesh.shape[AXIS]

    def place(x):
        if not hasattr(x, "shape") or getattr(x, "ndim", 0) == 0:
            return _put(x, NamedSharding(mesh, PartitionSpec())) if hasattr(x, "dtype") else x
        return _put(x, NamedSharding(mesh, param_spec(x.shape, n, fsdp)))

    for node in (model, optimizer):
        nnx.update(node, jax.tree.map(place, nnx.state(node)))


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
    """Where a batch array of rank `ndim` lives: batch axis over "data", sequence axis (the
    second, for ndim >= 2) over "seq"."""
    return NamedSharding(mesh, PartitionSpec(AXIS, SEQ_AXIS) if ndim >= 2 else PartitionSpec(AXIS))


def place_batch(batch: dict, mesh: Mesh | None) -> dict:
    """Put every array of a batch dict on the mesh (`batch_sharding`), or on the default device.

    In a multi-process run `batch` holds this process's rows only (the data pipeline reads rows
    p*B/P ... of each global batch in process p): the global arrays are assembled from every
    process's rows with `jax.make_array_from_process_local_data`, and no process holds the whole batch.
    """
    if mesh is None:
        return {k: jax.numpy.asarray(v) for k, v in batch.items()}
    if jax.process_count() == 1:
        return {k: jax.device_put(v, batch_sharding(mesh, np.ndim(v))) for k, v in batch.items()}
    count = jax.process_count()
    return {
        k: jax.make_array_from_process_local_data(
            batch_sharding(mesh, np.ndim(v)), np.asarray(v), (np.shape(v)[0] * count, *np.shape(v)[1:])
        )
        for k, v in batch.items()
    }


_COLLECTIVE = re.compile(
    r"= (?P<shape>\([^()]*\)|\S+) (?P<op>all-gather|all-reduce|collective-permute|"
    r"reduce-scatter|all-to-all)(?P<start>-start)?\("
)
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
        sizes = [
            int(np.prod([int(x) for x in a["dims"].split(",") if x], dtype=np.int64))
            * (1 if a["dtype"] == "pred" else int(re.sub(r"\D", "", a["dtype"])) // 8)  # f32 -> 4 bytes
            for a in _ARRAY.finditer(m["shape"])
        ]
        name = re.search(r'op_name="([^"]*)"', line)
        groups = re.search(r"replica_groups=mesh\[[^\]]*\] \{([^}]*)\}", line)
        axes = tuple(a.strip(" '") for a in groups.group(1).split(",")) if groups else None
        found.append(
            {
                "op": m["op"],
                "bytes": int(max(sizes) if m["start"] else sum(sizes)),
                "shape": m["shape"],
                "axes": axes,
                "op_name": name.group(1) if name else "",
            }
        )
    return found
