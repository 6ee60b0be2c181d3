"""Use a trained model: the model of a training run with its trained parameters, and its tokenizer.

    model = cottention_jax.load_model("runs/make-run")         # GPT or Bert, in eval mode
    tokenizer = cottention_jax.load_tokenizer("runs/make-run")     # the run's tokenizer.json
    ids = jnp.asarray([tokenizer.encode("ROMEO:\\n")])
    text = tokenizer.decode(decoding.generate(model, ids, max_new_tokens=50)[0])

`load_model` reads only the parameters of a checkpoint (`nnx.Param`): no optimizer state
is built or read, so it needs neither the training extra nor the memory of Adam's moments.
The architecture comes from the config saved with the checkpoint. The newest checkpoint
whose files match their checksums is used, unless `step` names one.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from flax import nnx

from cottention_jax.checkpoint import Checkpointer
from cottention_jax.configs import TrainConfig, from_dict
from cottention_jax.models import GPT, Bert

__all__ = ["load_model", "load_run_config", "load_tokenizer"]


def _checkpointer(workdir) -> Checkpointer:
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"workdir {os.fspath(workdir)!r} holds no checkpoints/ folder: it is not the "
                                "workdir of a training run (cottention-train --workdir ...)")
    return Checkpointer(directory, save_every=1, keep=1)


def _intact_step(ckpt: Checkpointer, step: int | None) -> int:
    """`step` if its files match their checksums, else (step None) the newest checkpoint that does."""
    steps = sorted(ckpt.manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {ckpt.directory}")
    problems = []
    for candidate in steps:
        if candidate not in ckpt.manager.all_steps():
            raise FileNotFoundError(f"no checkpoint of step {candidate} in {ckpt.directory}; "
                                    f"there are {sorted(ckpt.manager.all_steps())}")
        problem = ckpt.damage(candidate)
        if problem is None:
            return candidate
        problems.append(f"step {candidate}: {problem}")
    raise ValueError(f"no intact checkpoint in {ckpt.directory}: " + "; ".join(problems))


def load_run_config(workdir: str | os.PathLike, *, step: int | None = None) -> TrainConfig:
    """The `TrainConfig` saved with a run's checkpoint (default: the newest intact one)."""
    ckpt = _checkpointer(workdir)
    try:
        return from_dict(ckpt.read_config(_intact_step(ckpt, step)))
    finally:
        ckpt.close()


def load_model(workdir: str | os.PathLike, *, step: int | None = None, **model_overrides) -> GPT | Bert:
    """The trained model of a run: `GPT` (kind "gpt") or `Bert`, with the checkpoint's parameters.

    workdir: the run's folder (what `cottention-train --workdir` / `train_and_evaluate` wrote).
    step: which checkpoint (default: the newest whose files match their checksums).
    model_overrides: fields of the saved model config to replace, for how the model runs, e.g.
      `implementation="xla"` or `dtype="bfloat16"` (parameters keep their saved dtype unless
      `param_dtype` is overridden, when they are cast).
    Returns the model in eval mode (dropout off), its arrays on the default device.
    """
    ckpt = _checkpointer(workdir)
    try:
        found = _intact_step(ckpt, step)
        config = from_dict(ckpt.read_config(found))
        model_config = dataclasses.replace(config.model, sequence_axis=None, **model_overrides)
        model_class = GPT if config.kind == "gpt" else Bert
        graphdef, params, _ = nnx.split(nnx.eval_shape(lambda: model_class(model_config, rngs=nnx.Rngs(0))),
                                        nnx.Param, ...)
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)
        restored = ckpt.manager.restore(found, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item={"model": target}, restore_args={"model": ocp.checkpoint_utils.construct_restore_args(target)},
            partial_restore=True)))      # the parameters only: the optimizer's subtree is never read
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, restored.state["model"], _non_parameter_state(model_class, model_config))
    model.eval()
    return model


def _non_parameter_state(model_class, model_config) -> nnx.State:
    """The model's state other than its parameters (dropout keys and counts), made by building the model
    under jit: the parameter initialisers feed no output, so XLA drops them."""

    @jax.jit
    def build():
        return nnx.state(model_class(model_config, rngs=nnx.Rngs(0)), nnx.Not(nnx.Param))

    return build()


def load_tokenizer(workdir: str | os.PathLike, *, step: int | None = None):
    """The tokenizer a run trained with: `<workdir>/tokenizer.json`, which training writes at the
    start of every run; for a run that predates it, the one its saved data config names (kind,
    corpus, vocabulary size; `step` picks the checkpoint whose config is read).

    Raises CorruptDataError (naming the file) when tokenizer.json is not a readable tokenizer.
    """
    from cottention_jax.data import tokenization  # noqa: PLC0415  (imports `tokenizers`)

    saved = Path(workdir) / "tokenizer.json"
    if saved.is_file():
        return tokenization.load_tokenizer(saved)
    data = load_run_config(workdir, step=step).data
    return tokenization.get_tokenizer(data.tokenizer, data.corpus, data.vocab_size, data.data_dir)
