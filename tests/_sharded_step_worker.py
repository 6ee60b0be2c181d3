"""One training step under each sharding, on 8 simulated CPU devices (a process of its own: the
device count is fixed at start-up).

Called by tests/test_train.py as `python -m tests._sharded_step_worker <data_dir>` with
XLA_FLAGS=--xla_force_host_platform_device_count=8; prints one JSON object: per sharding kind
("none", "data", "fsdp", and "seq": a 2 x 4 data x sequence mesh with sequence-parallel
attention) the losses of three steps, one parameter after them, the first step's gradients, how
the batch and the parameter are split, and the collectives of the sequence-parallel step. The
assertions live in test_train.py; this file only computes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys

import jax
import numpy as np
from flax import nnx

from cottention_jax.configs import train_preset
from cottention_jax.objectives import gpt_objective
from cottention_jax.sharding import collectives, make_mesh, place_batch, shard_training_state
from cottention_jax.train import build_model, build_optimizer, prepare_data

# kind: (sharding, seq_parallel)
KINDS = {"none": ("none", 1), "data": ("data", 1), "fsdp": ("fsdp", 1), "seq": ("data", 4)}


@nnx.jit
def grads_of(model, batch):
    return nnx.grad(lambda m, b: gpt_objective(m, b)[0])(model, batch)


@nnx.jit
def train_step(model, opt, batch):
    (loss, _), grads = nnx.value_and_grad(gpt_objective, has_aux=True)(model, batch)
    opt.update(model, grads)
    return loss


def run_kind(base, kind: str, batches: list[dict]) -> dict:
    sharding, seq_parallel = KINDS[kind]
    cfg = dataclasses.replace(base, sharding=sharding, seq_parallel=seq_parallel)
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.optim, cfg.steps)
    mesh = make_mesh(sharding, seq_parallel)
    if mesh is not None:
        shard_training_state(model, opt, mesh, fsdp=kind == "fsdp")
    in_mesh = contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)
    with in_mesh:
        first = place_batch(batches[0], mesh)
        grads = [np.asarray(g) for _, g in sorted(nnx.to_flat_state(grads_of(model, first)), key=str)]
        hlo = grads_of.lower(model, first).compile().as_text() if kind == "seq" else ""
        losses = [float(train_step(model, opt, place_batch(b, mesh))) for b in batches]
    kernel = model.blocks[0].mlp.fc_in.kernel[...]
    # str(index): the index is a tuple of slices, which hash only from Python 3.12 on.
    batch_shards = len({str(s.index) for s in first["inputs"].addressable_shards}) if mesh else 1
    return {
        "losses": losses,
        "param": np.asarray(kernel).tolist(),
        "grads": [g.ravel().tolist() for g in grads],
        "sharding": str(kernel.sharding.spec) if mesh is not None else "",
        "batch_shards": batch_shards,
        "collectives": collectives(hlo),
    }


def main(data_dir: str) -> dict:
    jax.config.update("jax_default_matmul_precision", "highest")
    base = train_preset("gpt-tiny", [f"data.data_dir={data_dir}", "model.dropout_rate=0.0"])
    batches = [next(prepare_data(base).train) for _ in range(3)]
    out = {"devices": jax.device_count(), **{kind: run_kind(base, kind, batches) for kind in KINDS}}
    out["shape"] = [base.data.batch_size, base.data.seq_len, base.model.num_heads, base.model.head_dim]
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
