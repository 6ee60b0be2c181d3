"""Orbax checkpoints of a training run: {model, optimizer, step} + data-iterator state + config.

Each save is one Orbax step directory written under a temporary name and renamed
when complete, so an interrupted save never leaves a checkpoint that looks whole:
after a crash the latest complete step is restored and training continues exactly.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

__all__ = ["Checkpointer"]


class Checkpointer:
    """Save and restore `{model, optimizer, step}`, the data iterator's JSON state and the config.

    directory: where step directories go; save_every: steps between saves;
    keep: how many of the latest checkpoints to keep.
    """

    def __init__(self, directory: str | os.PathLike, *, save_every: int, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every, create=True)
        self.directory = os.path.abspath(os.fspath(directory))
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer, data_state: dict, config: dict,
             *, force: bool = False) -> bool:
        """Save if `step` is on the save interval (or `force`); returns whether a save started."""
        state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer), "step": jnp.asarray(step, jnp.int32)}
        return self.manager.save(step, force=force, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
            config=ocp.args.JsonSave(config)))

    def restore(self, model: nnx.Module, optimizer: nnx.Optimizer, step: int | None = None) -> tuple[int, dict, dict]:
        """Load a checkpoint (default: the latest) into `model` and `optimizer` in place.

        The arrays keep the shardings of the current model/optimizer state.
        Returns (step, data_state, config_dict).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        current = {"model": nnx.state(model), "optimizer": nnx.state(optimizer), "step": jnp.zeros((), jnp.int32)}
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, current)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
            config=ocp.args.JsonRestore()))
        nnx.update(model, restored.state["model"])
        nnx.update(optimizer, restored.state["optimizer"])
        return int(restored.state["step"]), dict(restored.data), dict(restored.config)

    def read_config(self, step: int | None = None) -> dict:
        """The config saved with a checkpoint (default: the latest), without loading any arrays."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored.config)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

