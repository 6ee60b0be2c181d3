"""Use a trained model: the model of a training run with its trained parameters, and its tokenizer.

    model = cottention_jax.load_model("runs/make-run")         # GPT or Bert, in eval mode
    tokenizer = cottention_jax.load_tokenizer("runs/make-run")     # the run's tokenizer.json
    ids = jnp.asarray([tokenizer.encode("ROMEO:\\n")])
    text = tokenizer.decode(decoding.generate(model, ids, max_new_tokens=50)[0])

`load_model` reads only the parameters of a checkpoint (`nnx.Param`): no optimizer state
is built or read, so it needs neither the training extra nor the memory of Adam's moments.
The architecture comes from the config saved with the checkpoint; overrides may change only
how it runs (`RUNTIME_FIELDS`). The newest checkpoint whose files match their checksums and
which Orbax reads is used, unless `step` names one; each newer one skipped is named in a
one-line warning on stderr (as when training resumes, but nothing is moved).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from cottention_jax.checkpoint import Checkpointer
from cottention_jax.configs import TrainConfig, from_dict
from cottention_jax.models import GPT, Bert

__all__ = ["RUNTIME_FIELDS", "load_model", "load_run_config", "load_tokenizer"]


# The model fields an override may change: how the model runs (implementation, precision, memory,
# checks), never what its trained parameters are or compute. Any other field keeps its saved value.
RUNTIME_FIELDS = (
    "implementation",
    "interpret",
    "dtype",
    "param_dtype",
    "remat",
    "loss_chunk",
    "checkify_ids",
    "dropout_rate",
    "max_len",
    "sequence_axis",
)

_warned: set[str] = set()


def _warn_once(line: str) -> None:
    """A checkpoint notice on stderr, once per process: `cottention-generate` reads the config, then the
    model, of the same damaged run, and the user needs to read that warning once."""
    if line not in _warned:
        _warned.add(line)
        print(line, file=sys.stderr)


def _checkpointer(workdir) -> Checkpointer:
    directory = Path(workdir) / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(
            f"workdir {os.fspath(workdir)!r} holds no checkpoints/ folder: it is not the "
            "workdir of a training run (cottention-train --workdir ...)"
        )
    return Checkpointer(directory, save_every=1, keep=1, log=_warn_once)


def load_run_config(workdir: str | os.PathLike, *, step: int | None = None) -> TrainConfig:
    """The `TrainConfig` saved with a run's checkpoint (default: the newest intact one; a damaged newer one
    is named in a one-line warning on stderr)."""
    ckpt = _checkpointer(workdir)
    try:
        return from_dict(ckpt.read_config(step))
    finally:
        ckpt.close()


def _parameter_shapes(model_class, model_config) -> dict:
    """{parameter path: shape} of the model `model_config` builds (abstractly: nothing is allocated)."""
    abstract = nnx.eval_shape(lambda: model_class(model_config, rngs=nnx.Rngs(0)))
    return {path: tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}


def _model_config(saved, model_class, overrides: dict):
    """The saved model config with `overrides` applied, refusing (ValueError, naming the override and both
    values) one that would change the trained model: a field outside RUNTIME_FIELDS with another value,
    or one that changes the shape of a parameter (Bert's max_len sizes its position table)."""
    fields = {f.name for f in dataclasses.fields(saved)}
    for name, value in overrides.items():
        if name not in fields:
            raise ValueError(
                f"load_model: {name!r} is not a field of {type(saved).__name__}; the fields an "
                f"override may change are {', '.join(RUNTIME_FIELDS)}"
            )
        if name not in RUNTIME_FIELDS and value != getattr(saved, name):
            raise ValueError(
                f"load_model: the override {name}={value!r} would change the trained model (the "
                f"checkpoint has {name}={getattr(saved, name)!r}); only these fields may be "
                f"overridden: {', '.join(RUNTIME_FIELDS)}"
            )
    base = dataclasses.replace(saved, sequence_axis=None)  # one device: the sequence is not split
    config = dataclasses.replace(base, **overrides)
    changed = {name: value for name, value in overrides.items() if value != getattr(saved, name)}
    if changed:
        want = _parameter_shapes(model_class, base)
        for name, value in changed.items():
            got = _parameter_shapes(model_class, dataclasses.replace(base, **{name: value}))
            moved = next((p for p in [*want, *got] if got.get(p) != want.get(p)), None)  # resized, gone or new
            if moved is not None:
                where = "/".join(map(str, moved))
                raise ValueError(
                    f"load_model: the override {name}={value!r} changes the shape of the trained "
                    f"parameter {where} from {want.get(moved)} to {got.get(moved)} (the checkpoint "
                    f"has {name}={getattr(saved, name)!r}): it cannot be overridden for this model"
                )
    return config


def load_model(workdir: str | os.PathLike, *, step: int | None = None, **model_overrides) -> GPT | Bert:
    """The trained model of a run: `GPT` (kind "gpt") or `Bert`, with the checkpoint's parameters.

    workdir: the run's folder (what `cottention-train --workdir` / `train_and_evaluate` wrote).
    step: which checkpoint (default: the newest intact one: its files match their checksums and
      Orbax reads them; each newer one skipped is named in a one-line warning on stderr).
    model_overrides: fields of the saved model config to replace, for how the model runs: only
      RUNTIME_FIELDS, e.g. `implementation="xla"` or `dtype="bfloat16"` (parameters keep their saved
      dtype unless `param_dtype` is overridden, when they are cast). An override that would change the
      trained model (num_layers, d_model, vocab_size, num_heads, attention, rotary_dim...) is a ValueError.
    Returns the model in eval mode (dropout off), its arrays on the default device.
    Raises FileNotFoundError (no checkpoint, or no `step`) and CheckpointError (none intact).
    """
    ckpt = _checkpointer(workdir)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    built: dict[str, Any] = {}

    def target(saved: dict):
        """The parameters to read, in the shapes of the saved config (with the overrides, checked)."""
        config = from_dict(saved)
        model_class = GPT if config.kind == "gpt" else Bert
        model_config = _model_config(config.model, model_class, model_overrides)
        graphdef, params, *_ = nnx.split(
            nnx.eval_shape(lambda: model_class(model_config, rngs=nnx.Rngs(0))), nnx.Param, ...
        )
        built.update(model_class=model_class, model_config=model_config, graphdef=graphdef)
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)

    try:
        _, _, params = ckpt.restore_params(target, step)
    finally:
        ckpt.close()
    model = nnx.merge(built["graphdef"], params, _non_parameter_state(built["model_class"], built["model_config"]))
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

    Raises CorruptDataError (one line, naming the file) when tokenizer.json is not a readable
    tokenizer, or when it no longer matches the fingerprint training stored beside it
    (`tokenization.save_run_tokenizer`; a workdir written before fingerprints has none, and loads).
    """
    from cottention_jax.data import tokenization  # noqa: PLC0415  (imports `tokenizers`)

    saved = Path(workdir) / tokenization.RUN_TOKENIZER
    if saved.is_file():
        return tokenization.load_tokenizer(saved)
    data = load_run_config(workdir, step=step).data
    return tokenization.get_tokenizer(data.tokenizer, data.corpus, data.vocab_size, data.data_dir)
