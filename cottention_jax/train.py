"""Training and evaluation for GPT (causal LM), BERT MLM pretraining and BERT classification.

`train_and_evaluate(config, workdir, hooks=[...])` is the whole run, in three parts:
  setup_run   data (cottention_jax.data) -> model -> Optax AdamW (warm-up + decay, clipping,
              accumulation) -> mesh and sharding (optional) -> resume: a `RunState`;
  run_loop    nnx.jit steps, each followed by the hooks due then (`train_hooks`: `every` N steps
              and after the last): train log, evaluation, stabilizer logging, Orbax checkpoints
              {model, optimizer, step} + iterator state + config, then the caller's hooks;
  report      held-out test, plot, generated sample, summary.json.
Re-running with the same workdir resumes from the latest checkpoint and continues
exactly as if never interrupted (same batches, same dropout, same losses). A larger `steps`
extends the run (the learning-rate schedule is recomputed for the new length, with a notice);
any other change of the model, data, optimizer or seed is refused, naming the field.
`init_from` starts the model from another run's latest checkpoint: every parameter array but a
classifier head must match it by name and shape (`init_from_partial=True`: those that do).

Guards: the workdir is locked for the run (`workdir_lock`: a second run there fails at
once); a non-finite loss or gradient norm stops the run with `TrainingDivergedError`
before anything of it is saved, so the last checkpoint stays the last finite one; the
checkpoints are checksummed and a damaged one is skipped on resume (`checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from cottention_jax import decoding
from cottention_jax.checkpoint import Checkpointer
from cottention_jax.configs import DataConfig, OptimConfig, TrainConfig, from_dict, to_dict
from cottention_jax.data.tokenization import save_run_tokenizer
from cottention_jax.metrics import MetricsWriter, NullWriter, plot_training_curves
from cottention_jax.models import GPT, Bert, GPTConfig
from cottention_jax.objectives import LOSSES
from cottention_jax.preemption import RunInterrupted, StopSignals
from cottention_jax.sharding import SEQ_AXIS, make_mesh, place_batch, shard_training_state
from cottention_jax.train_data import DataBundle, prepare_data
from cottention_jax.train_hooks import (
    CheckpointHook,
    EvalHook,
    FunctionHook,
    Hook,
    RunState,
    StabilizerHook,
    TrainLogHook,
    default_hooks,
    due,
    evaluate,
    hook,
    stabilizer_values,
)
from cottention_jax.workdir_lock import WorkdirLock

__all__ = [
    "CheckpointHook",
    "DataBundle",
    "EvalHook",
    "FunctionHook",
    "Hook",
    "RunInterrupted",
    "RunState",
    "StabilizerHook",
    "TrainLogHook",
    "TrainingDivergedError",
    "build_model",
    "build_optimizer",
    "default_hooks",
    "evaluate",
    "hook",
    "learning_rate_schedule",
    "make_train_step",
    "prepare_data",
    "report",
    "run_loop",
    "setup_run",
    "stabilizer_values",
    "train_and_evaluate",
]


class TrainingDivergedError(FloatingPointError):
    """A training step gave a NaN or infinite loss or gradient norm; nothing of it was saved."""


# ----------------------------------------------------------------------------- building blocks


def learning_rate_schedule(optim: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to the peak, then cosine/linear decay to peak * end_lr_ratio, or constant."""
    peak, end = optim.learning_rate, optim.learning_rate * optim.end_lr_ratio
    warmup = min(optim.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, warmup + decay_steps, end)
    if optim.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif optim.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"optim.schedule must be 'cosine', 'linear' or 'constant'; got {optim.schedule!r}")
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def _decay_mask(params):
    """Weight decay on matrices only: not on biases, norms, or the stabilizers (their decay is a result)."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def build_optimizer(model: nnx.Module, optim: OptimConfig, total_steps: int) -> nnx.Optimizer:
    """AdamW (+ global-norm clipping, + optax.MultiSteps accumulation) over the model's nnx.Param."""
    schedule = learning_rate_schedule(optim, total_steps)
    parts = [optax.clip_by_global_norm(optim.grad_clip)] if optim.grad_clip > 0 else []
    parts.append(
        optax.adamw(
            schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay, mask=_decay_mask
        )
    )
    tx = optax.chain(*parts)
    if optim.accumulate_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim.accumulate_steps)
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def build_model(config: TrainConfig, seed: int | None = None) -> nnx.Module:
    """GPT for kind "gpt", Bert otherwise; params from `seed`, dropout from `seed + 1`.

    With config.seq_parallel > 1 the attention layers split the sequence over the mesh's
    "seq" axis (`model.sequence_axis`), under the mesh the training loop sets.
    """
    seed = config.seed if seed is None else seed
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    model_config = config.model
    if config.seq_parallel > 1 and model_config.sequence_axis is None:
        model_config = dataclasses.replace(model_config, sequence_axis=SEQ_AXIS)
    if isinstance(model_config, GPTConfig):  # kind "gpt" (TrainConfig checks that they agree)
        return GPT(model_config, rngs=rngs)
    return Bert(model_config, rngs=rngs)


def make_train_step(kind: str):
    """A jitted step (model, optimizer, batch) -> (loss, gradient norm) that updates both in place."""
    objective = LOSSES[kind]

    @nnx.jit
    def train_step(model, optimizer, batch):
        (loss, _), grads = nnx.value_and_grad(objective, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return loss, optax.tree_utils.tree_norm(grads)

    return train_step


# ----------------------------------------------------------------------------- the run

# How a step is computed, not what it computes: these may change between a run and its resumption.
_EXECUTION_FIELDS = ("remat", "loss_chunk", "implementation", "interpret", "sequence_axis", "checkify_ids")

# What makes a run the same run; `steps` may change (the schedule is recomputed), execution fields too.
_RUN_FIELDS = ("kind", "model", "data", "optim", "seed")


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"model": {"attention": "cosine"}} -> {"model.attention": "cosine"}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(_flat(value, name + ".") if isinstance(value, dict) else {name: value})
    return out


def _check_resumable(saved: dict, config: TrainConfig) -> None:
    """Resuming with a different model, data, optimizer or seed would not continue the same run:
    a ValueError naming each changed field with its saved and its new value, in one line.

    The model's execution fields (rematerialisation, loss chunking, attention implementation,
    sequence splitting) and the data cache's folder (prepared data is keyed by its contents) are not
    compared, and fields a checkpoint predates take their defaults.
    `steps` is not compared: a run may be extended (or shortened, down to its checkpoint's step).
    """
    current = to_dict(config)
    if saved.get("kind") != config.kind:
        raise ValueError(
            f"the checkpoint in this workdir is of a different run: kind {saved.get('kind')!r} there, "
            f"{config.kind!r} now. Use a new workdir (or the kind it was trained with)"
        )
    defaults = {"model": type(config.model)(), "data": DataConfig(), "optim": OptimConfig()}
    then = {"kind": saved["kind"], "seed": saved.get("seed")}
    for section, default in defaults.items():
        then[section] = {**dataclasses.asdict(default), **saved.get(section, {})}
    for name in _EXECUTION_FIELDS:  # how a step is computed may change
        then["model"][name] = current["model"][name]
    then["data"]["data_dir"] = current["data"]["data_dir"]  # where the prepared data is cached, not what it is
    now, then = _flat({k: current[k] for k in _RUN_FIELDS}), _flat(then)
    changed = [
        f"{k} {then.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}"
        for k in sorted(set(now) | set(then))
        if then.get(k, "(absent)") != now.get(k, "(absent)")
    ]
    if changed:
        raise ValueError(
            f"the checkpoint in this workdir is of a different run: {', '.join(changed)} (saved -> "
            "now). Resume with the saved values, or use a new workdir"
        )


def _check_init_from_exists(config: TrainConfig) -> None:
    """init_from must be a training workdir holding a checkpoint; checked before anything is written."""
    if not config.init_from:
        return
    root = Path(config.init_from)
    if not root.is_dir():
        raise ValueError(
            f"init_from={config.init_from!r} does not exist or is not a directory: give the workdir of "
            "the run to start from"
        )
    ckpts = root / "checkpoints"
    if not ckpts.is_dir() or not any(p.name.isdigit() for p in ckpts.iterdir()):
        raise ValueError(
            f"init_from={config.init_from!r} holds no checkpoint ({ckpts} has none): give the workdir "
            "of a run that saved one"
        )


def _param_shapes(model: nnx.Module) -> dict[tuple, tuple]:
    """{parameter path: shape} of a model (concrete or from nnx.eval_shape)."""
    return {path: tuple(var.get_raw_value().shape) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _init_plan(
    config: TrainConfig, target: dict[tuple, tuple], source: dict[tuple, tuple], source_kind: str
) -> tuple[list[tuple], list[tuple]]:
    """Which of the new model's parameter arrays init_from gives: (matching paths, the others).

    Every array but the classifier head (new for a task) must match one of the source model by path and
    shape, unless config.init_from_partial; none matching is always refused.
    """
    wanted = [path for path in target if path[0] != "classifier"]
    matching = [path for path in wanted if source.get(path) == target[path]]
    others = [path for path in wanted if source.get(path) != target[path]]
    where = f"init_from={config.init_from!r}"
    if not matching:
        raise ValueError(
            f"{where}: its {source_kind} model shares no parameter array with this {config.kind} model "
            f"(0 of {len(wanted)} match by name and shape): start from a run of the same architecture"
        )
    if others and not config.init_from_partial:
        shown = "; ".join(
            f"{'.'.join(map(str, p))} {target[p]} here, {source[p] if p in source else 'absent'} there"
            for p in others[:3]
        )
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        raise ValueError(
            f"{where}: only {len(matching)} of {len(wanted)} parameter arrays of this {config.kind} "
            f"model match its {source_kind} model by name and shape ({shown}{more}); set "
            f"init_from_partial=true to start from the {len(matching)} that match and train the others "
            "from scratch"
        )
    return matching, others


def _read_init_from(config: TrainConfig, log: Callable[[str], None]) -> tuple[Checkpointer, TrainConfig]:
    """A Checkpointer on config.init_from's checkpoints (after `_check_init_from_exists`) and its run's config."""
    _check_init_from_exists(config)
    ckpt = Checkpointer(Path(str(config.init_from)) / "checkpoints", save_every=1, keep=1, log=log)
    return ckpt, from_dict(ckpt.read_config())


def _check_init_from(config: TrainConfig, log: Callable[[str], None]) -> None:
    """Refuse an init_from whose model does not fit this one (see `_init_plan`), from shapes alone."""
    ckpt, saved = _read_init_from(config, log)
    ckpt.close()
    _init_plan(
        config,
        _param_shapes(nnx.eval_shape(lambda: build_model(config))),
        _param_shapes(nnx.eval_shape(lambda: build_model(saved))),
        saved.kind,
    )


def _init_from_pretrained(model: nnx.Module, config: TrainConfig, log: Callable[[str], None]) -> str:
    """Copy the parameters of config.init_from's latest checkpoint into `model` (all but a classifier head;
    with init_from_partial, those that match by name and shape)."""
    ckpt, saved = _read_init_from(config, log)
    pre_model = build_model(saved)
    step, _, _ = ckpt.restore(
        pre_model, build_optimizer(pre_model, saved.optim, saved.steps), set_aside_damaged=False
    )  # another run's workdir: read only
    ckpt.close()
    matching, others = _init_plan(config, _param_shapes(model), _param_shapes(pre_model), saved.kind)
    params = nnx.state(model, nnx.Param)
    pretrained = dict(nnx.to_flat_state(nnx.state(pre_model, nnx.Param)))
    flat = dict(nnx.to_flat_state(params))
    for path in matching:
        flat[path][...] = pretrained[path][...]
    nnx.update(model, params)
    rest = (
        f"; {len(others)} start from scratch (init_from_partial), e.g. {'.'.join(map(str, others[0]))}"
        if others
        else ""
    )
    return (
        f"initialised {len(matching)} of {len(matching) + len(others)} parameter arrays from {config.init_from} "
        f"(step {step}){rest}"
    )


def _check_finite(step: int, loss: float, grad_norm: float, last_saved: int | None, schedule) -> None:
    """Stop at a NaN or infinite loss or gradient norm, before the step's state can be saved."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        lr = float(schedule(step - 1))
        kept = "no checkpoint was saved" if last_saved is None else f"the last checkpoint (step {last_saved}) is kept"
        raise TrainingDivergedError(
            f"training diverged at step {step}: loss {loss}, gradient norm {grad_norm} at learning rate {lr:.3g}; "
            f"the run stops and saves nothing of it, {kept}. Lower optim.learning_rate (or raise warmup_steps, "
            f"clip gradients with optim.grad_clip) and start again in a new workdir"
        )


# ----------------------------------------------------------------------------- the run: set-up, loop, report


def train_and_evaluate(
    config: TrainConfig, workdir: str | Path, *, progress: bool = True, hooks: Sequence[Hook] = ()
) -> dict:
    """Train `config` in `workdir` (resuming if it holds a checkpoint); return the summary dict.

    `hooks`: more `Hook`s (e.g. `hook(fn, every=50)`), each called as `fn(run: RunState, step)`
    every `every` steps and after the last, after the run's own (train log, evaluation,
    stabilizers, checkpoint). Holds the workdir's lock throughout (`WorkdirLockedError` if
    another run has it). Raises TrainingDivergedError at the first non-finite loss or gradient
    norm, and the errors of `Checkpointer` for checkpoints that cannot be saved or of which none
    is intact. A config that cannot run here is a one-line ValueError: a checkpoint of another run
    in `workdir` (naming each changed field), `steps` below its step, an init_from that is missing
    or of another architecture, a model.vocab_size set by the user that is not the tokenizer's.
    """
    for h in hooks:
        if not isinstance(h, Hook):
            raise TypeError(f"hooks must be Hook objects (callables with an `every`; see train.hook); got {h!r}")
        if isinstance(h.every, bool) or not isinstance(h.every, int) or h.every < 1:
            raise ValueError(f"a hook's every must be an int >= 1; got {h.every!r} for {h!r}")
    workdir = Path(workdir)
    _check_lengths(config)
    _check_processes(config)
    _check_init_from_exists(config)
    primary = jax.process_index() == 0
    log = tqdm.write if primary else _quiet
    # Before the workdir exists, so that a mistake writes nothing: the data, the vocabulary, init_from.
    data = prepare_data(config, progress=progress and primary)
    config = _fit_model_to_data(config, data, log)
    if config.init_from:
        _check_init_from(config, log)
    workdir.mkdir(parents=True, exist_ok=True)
    # One run per workdir: the primary process holds the lock for all of a multi-process run.
    with WorkdirLock(workdir, log=tqdm.write, enabled=primary):
        run = setup_run(config, workdir, data=data, log=log)
        run_loop(run, [*default_hooks(run.config), *hooks], progress=progress and primary)
        return report(run)


def _quiet(line: str) -> None:
    """The log of a process other than the primary: its errors are raised, its progress is the primary's."""


def _check_processes(config: TrainConfig) -> None:
    if jax.process_count() > 1 and config.sharding == "none":
        raise ValueError(
            f"a run over {jax.process_count()} processes needs sharding='data' or 'fsdp' (a mesh over "
            "their devices); got sharding='none'"
        )


def _check_lengths(config: TrainConfig) -> None:
    """The models refuse inputs longer than max_len: say so before any work."""
    if config.data.seq_len > config.model.max_len:
        raise ValueError(
            f"data.seq_len ({config.data.seq_len}) must be <= model.max_len ({config.model.max_len}); "
            f"set model.max_len={config.data.seq_len} too"
        )


def _fit_model_to_data(config: TrainConfig, data: DataBundle, log: Callable[[str], None]) -> TrainConfig:
    """The model's vocabulary (and classifier outputs) as the data needs them, saying so when they change.

    A vocabulary the user set (config.vocab_from_tokenizer False, as a `model.vocab_size=N` override
    makes it) is never changed: one that is not the tokenizer's is a ValueError naming both.
    """
    model, size = config.model, data.tokenizer.vocab_size
    if model.vocab_size != size:
        if not config.vocab_from_tokenizer:
            raise ValueError(
                f"model.vocab_size={model.vocab_size} was set, but the tokenizer ({data.tokenizer.kind}) "
                f"the data is made with has {size} tokens: set model.vocab_size={size}, or leave it "
                "unset (it then follows the tokenizer), or choose data.vocab_size / data.tokenizer to "
                "make the vocabulary you want"
            )
        log(
            f"model.vocab_size {model.vocab_size} -> {size}: the size of the tokenizer ({data.tokenizer.kind}) the "
            "data was made with"
        )
        model = dataclasses.replace(model, vocab_size=size)
    if data.task is not None and getattr(model, "num_labels", None) != data.task.num_labels:
        model = dataclasses.replace(model, num_labels=data.task.num_labels)
    return dataclasses.replace(config, model=model)


def setup_run(
    config: TrainConfig, workdir: Path, log: Callable[[str], None] = tqdm.write, data: DataBundle | None = None
) -> RunState:
    """Data (unless given), model, optimizer, mesh and sharding, then resume from the latest intact checkpoint
    (if any); writes config.json and tokenizer.json (the run's own) and opens metrics.jsonl. The caller holds
    the workdir lock."""
    _check_lengths(config)
    data = prepare_data(config, log=log) if data is None else data
    config = _fit_model_to_data(config, data, log)
    primary = jax.process_index() == 0  # only the primary process writes the run's files
    log(f"data: {data.description}; tokenizer vocabulary {data.tokenizer.vocab_size}")
    if primary:
        save_run_tokenizer(data.tokenizer, workdir)  # tokenizer.json and its SHA-256, checked on load

    model = build_model(config)
    if config.init_from:
        log(_init_from_pretrained(model, config, log))
    optimizer = build_optimizer(model, config.optim, config.steps)
    schedule = learning_rate_schedule(config.optim, config.steps)  # what the optimizer follows
    mesh = make_mesh(config.sharding, config.seq_parallel)
    if mesh is not None:
        if config.data.batch_size % mesh.shape["data"]:
            raise ValueError(
                f"data.batch_size ({config.data.batch_size}) must be divisible by the "
                f"{mesh.shape['data']} devices of the data axis for sharding={config.sharding!r}"
            )
        shard_training_state(model, optimizer, mesh, fsdp=config.sharding == "fsdp")
    n_params = sum(int(np.prod(v[...].shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    log(
        f"model: {config.kind} {config.model.attention} attention, {n_params:,} parameters, "
        f"{jax.device_count()} {jax.default_backend()} device(s){processes}, sharding={config.sharding}"
        + (f", sequence split over {config.seq_parallel}" if config.seq_parallel > 1 else "")
    )

    ckpt = Checkpointer(
        workdir / "checkpoints", save_every=config.checkpoint_every, keep=config.keep_checkpoints, log=log
    )
    start = 0
    if ckpt.latest_step() is not None:
        start, data_state, saved = ckpt.restore(
            model, optimizer, check_config=lambda saved: _check_resumable(saved, config)
        )
        if start > config.steps:
            ckpt.close()
            raise ValueError(
                f"steps={config.steps} is below the step of the checkpoint in {workdir} ({start}): set "
                f"steps >= {start} to continue that run, or use a new workdir"
            )
        data.train.set_state(data_state)
        log(f"resumed from step {start}")
        if saved.get("steps") != config.steps:
            log(
                f"steps {saved.get('steps')} -> {config.steps}: the learning-rate schedule is recomputed for "
                f"{config.steps} steps (at step {start}: {float(schedule(start)):.3g})"
            )
    if primary:
        (workdir / "config.json").write_text(json.dumps(to_dict(config), indent=1))
    writer = MetricsWriter(workdir, resume_step=start if start else None, log=log) if primary else NullWriter()

    objective = LOSSES[config.kind]

    @nnx.jit
    def eval_step(model, batch):
        return objective(model, batch)[1]

    return RunState(
        config=config,
        workdir=workdir,
        data=data,
        model=model,
        optimizer=optimizer,
        mesh=mesh,
        checkpointer=ckpt,
        writer=writer,
        schedule=schedule,
        train_step=make_train_step(config.kind),
        eval_step=eval_step,
        n_params=n_params,
        start=start,
        last_saved=start or None,
        log=log,
        step=start,
    )


def run_loop(run: RunState, hooks: Sequence[Hook], *, progress: bool = True) -> None:
    """The optimizer steps from run.start + 1 to config.steps, each followed by the hooks due then.

    A fresh run first calls the hooks marked `at_start` at step 0 (the evaluation before training);
    a workdir that held a finished run calls them at the last step (so the summary has an evaluation;
    the records they make are in metrics.jsonl already, and `MetricsWriter` does not repeat them).
    Every micro-step's loss and gradient norm is checked before any hook (a checkpoint) sees the state.
    """
    config = run.config
    at_start = [h for h in hooks if getattr(h, "at_start", False)]
    run.bar = tqdm(
        total=config.steps,
        initial=run.start,
        desc=f"train {config.kind}/{config.model.attention}",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    with run.in_mesh(), StopSignals() as signals:
        if run.start == 0:
            for h in at_start:
                h(run, 0)
        for step in range(run.start + 1, config.steps + 1):
            for _ in range(config.optim.accumulate_steps):
                loss, grad_norm = run.train_step(run.model, run.optimizer, place_batch(next(run.data.train), run.mesh))
                _check_finite(step, float(loss), float(grad_norm), run.last_saved, run.schedule)
            run.step = step
            run.window.append((float(loss), float(grad_norm)))
            run.history.append(float(loss))
            for h in hooks:
                if due(h, step, config.steps):
                    h(run, step)
            run.bar.update(1)
            signum = signals.agreed(step)
            if signum is not None and step < config.steps:
                _stop_on_signal(run, step, signum)
        run.bar.close()
        if not run.last_eval:  # the workdir held a finished run: evaluate it again for the summary
            for h in at_start:
                h(run, config.steps)
    run.checkpointer.close()
    run.writer.close()
    if hasattr(run.data.train, "close"):  # stops the input pipeline's prefetch thread
        run.data.train.close()


def _stop_on_signal(run: RunState, step: int, signum: int) -> None:
    """Save the state after `step` (every process takes part), close what the run holds, raise RunInterrupted."""
    saved = run.last_saved == step
    if not saved:
        saved = run.checkpointer.save(
            step, run.model, run.optimizer, run.data.train.get_state(), to_dict(run.config), force=True
        )
        run.last_saved = step if saved else run.last_saved
    run.bar.close()
    run.checkpointer.close()
    run.writer.close()
    if hasattr(run.data.train, "close"):
        run.data.train.close()
    raise RunInterrupted(step, signum, saved)


def report(run: RunState) -> dict:
    """The summary (also summary.json): final evaluation, held-out test (classification), stabilizers;
    the training plot, and for GPT a generated sample (sample.txt)."""
    config, workdir, log = run.config, run.workdir, run.log
    summary: dict[str, Any] = {
        "kind": config.kind,
        "attention": config.model.attention,
        "steps": config.steps,
        "parameters": run.n_params,
        "vocab_size": config.model.vocab_size,
        "final_eval": run.last_eval,
        "workdir": str(workdir),
    }
    if "test" in run.data.eval_splits:
        with run.in_mesh():
            summary["test"] = evaluate(run.model, run.eval_step, run.data.eval_splits["test"](), 0, run.mesh)
        scores = ", ".join(f"{k} {v:.4f}" for k, v in summary["test"].items() if k not in ("loss", "count"))
        log(f"held-out test: {scores} on {summary['test']['count']:.0f} examples")
    stab = stabilizer_values(run.model)
    if stab:
        summary["stabilizer_mean_per_layer"] = [float(v.mean()) for v in stab]
    if config.kind == "gpt" and config.sample_tokens and jax.process_count() == 1:
        summary["sample"] = _sample(run.model, run.data.tokenizer, config)  # (several processes: cottention-generate)
    if jax.process_index() == 0:  # the run's files: the primary process writes them
        plot_training_curves(
            workdir / "metrics.jsonl", workdir / "training.png", f"{config.kind} / {config.model.attention} attention"
        )
        if "sample" in summary:
            (workdir / "sample.txt").write_text(summary["sample"])
        (workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _sample(model, tokenizer, config: TrainConfig) -> str:
    """Text generated after config.sample_prompt through the RNN / KV-cache decoding path."""
    prompt = jnp.asarray([tokenizer.encode(config.sample_prompt)], jnp.int32)
    tokens = decoding.generate(
        model,
        prompt,
        max_new_tokens=config.sample_tokens,
        key=jax.random.PRNGKey(config.seed),
        temperature=0.8,
        top_k=40,
    )
    return config.sample_prompt + tokenizer.decode([int(t) for t in tokens[0]])
