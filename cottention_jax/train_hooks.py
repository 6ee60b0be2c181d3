"""The hooks of a training run and the state they read: what `train.run_loop` calls after a step.

`RunState` is what a run holds from set-up to the summary. A `Hook` is any callable
`hook(run, step)` with an `every`: the loop calls it after every `every`-th step and after
the last one (and at step 0 of a fresh run when `at_start`). The run's own, in order
(`default_hooks`): the train log line, evaluation, the stabilizer values, the checkpoint.
Users add theirs with `hook(fn, every=N)` (or `@hook(every=N)`) and
`train_and_evaluate(config, workdir, hooks=[...])`.

Layering: `train` builds and runs a `RunState` with these hooks; this module imports nothing of `train`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from cottention_jax.configs import TrainConfig, to_dict
from cottention_jax.data.glue import task_metrics
from cottention_jax.layers import CosineAttention
from cottention_jax.metrics import MetricsWriter, NullWriter, safe_exp
from cottention_jax.sharding import place_batch

if TYPE_CHECKING:
    import optax

    from cottention_jax.checkpoint import Checkpointer
    from cottention_jax.train_data import DataBundle

__all__ = [
    "CheckpointHook",
    "EvalHook",
    "FunctionHook",
    "Hook",
    "RunState",
    "StabilizerHook",
    "TrainLogHook",
    "default_hooks",
    "due",
    "evaluate",
    "hook",
    "stabilizer_values",
]


@dataclasses.dataclass(eq=False)
class RunState:
    """What a run holds from set-up to the summary; hooks read it, and write through `writer`/`log`.

    `step` is the optimizer step just taken (0 before the first); `window` the (loss, gradient
    norm) of each step since the last train log, `history` every step's loss; `last_eval` the
    latest evaluation (empty until one ran); `last_saved` the latest checkpoint's step, or None.
    """

    config: TrainConfig
    workdir: Path
    data: DataBundle
    model: nnx.Module
    optimizer: nnx.Optimizer
    mesh: Any  # jax.sharding.Mesh, or None: one device
    checkpointer: Checkpointer
    writer: MetricsWriter | NullWriter  # NullWriter: a process other than the primary one
    schedule: optax.Schedule
    train_step: Callable
    eval_step: Callable
    n_params: int
    start: int  # the step the run (re)started from
    last_saved: int | None
    log: Callable[[str], None] = tqdm.write
    step: int = 0
    last_eval: dict = dataclasses.field(default_factory=dict)
    window: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    window_start: float = dataclasses.field(default_factory=time.perf_counter)  # from set-up
    history: list[float] = dataclasses.field(default_factory=list)
    bar: Any = None  # the tqdm progress bar, while the loop runs

    def in_mesh(self):
        """The mesh as the context of a step (so attention finds its sequence axis), or nothing."""
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()


# ----------------------------------------------------------------------------- evaluation and hooks


def stabilizer_values(model: nnx.Module) -> list[np.ndarray]:
    """sigmoid(m) of every cosine attention layer, in layer order: a list of (heads,) arrays."""
    return [
        np.asarray(jax.nn.sigmoid(layer.stabilizer[...]))
        for _, layer in nnx.iter_graph(model)
        if isinstance(layer, CosineAttention)
    ]


def _host_rows(x) -> np.ndarray:
    """A (B,) array of a step's output on the host, gathered from every process when sharded across them."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def evaluate(
    model, eval_step, batches: Iterator[dict], max_batches: int, mesh=None, metric_names: Sequence[str] | None = None
) -> dict:
    """Exact mean loss (and accuracy, perplexity) over up to max_batches batches (0: all).

    When eval_step's sums carry "predictions" (classification: `objectives.classification_objective`),
    the rows of weight > 0 are gathered and the task metrics added (`glue.task_metrics`):
    `metric_names`, or by default "f1" and "matthews_corrcoef" when every label and prediction is
    0 or 1. Regression (float predictions) reports "pearson" and "spearman" and no accuracy.
    """
    model.eval()
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    rows: dict[str, list[np.ndarray]] = {"predictions": [], "labels": [], "weights": []}
    for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
            break
        sums = eval_step(model, place_batch(batch, mesh))
        for k in totals:
            totals[k] += float(sums[k])
        if "predictions" in sums:
            for k in rows:
                rows[k].append(_host_rows(sums[k]).reshape(-1))
    model.train()
    loss = totals["loss_sum"] / max(totals["count"], 1.0)
    out = {
        "loss": loss,
        "accuracy": totals["correct"] / max(totals["count"], 1.0),
        "perplexity": safe_exp(loss),
        "count": totals["count"],
    }
    if rows["predictions"]:
        keep = np.concatenate(rows["weights"]) > 0
        predictions, labels = (np.concatenate(rows[k])[keep] for k in ("predictions", "labels"))
        regression = np.issubdtype(predictions.dtype, np.floating)
        if metric_names is None:
            binary = np.isin(predictions, (0, 1)).all() and np.isin(labels, (0, 1)).all()
            metric_names = ("pearson", "spearman") if regression else ("f1", "matthews_corrcoef") if binary else ()
        if regression:
            del out["accuracy"], out["perplexity"]
        out.update(task_metrics(metric_names, predictions, labels))
    return out


@runtime_checkable
class Hook(Protocol):
    """Something the loop calls as `hook(run, step)` after every `every`-th optimizer step and
    after the last one (and at step 0 of a fresh run too when `at_start` is true)."""

    @property
    def every(self) -> int: ...

    def __call__(self, run: RunState, step: int) -> None: ...


@dataclasses.dataclass(frozen=True)
class FunctionHook:
    """A function `fn(run, step)` as a Hook (what `hook` makes)."""

    fn: Callable[[RunState, int], None]
    every: int
    at_start: bool = False

    def __post_init__(self):
        if not (isinstance(self.every, int) and not isinstance(self.every, bool) and self.every >= 1):
            raise ValueError(f"a hook's every must be an int >= 1; got {self.every!r}")

    def __call__(self, run: RunState, step: int) -> None:
        self.fn(run, step)


def hook(fn: Callable[[RunState, int], None] | None = None, *, every: int, at_start: bool = False):
    """`fn(run, step)` run every `every` steps (and at the last): `hook(fn, every=50)`, or as a
    decorator, `@hook(every=50)`. Pass it to `train_and_evaluate(config, workdir, hooks=[...])`."""
    if fn is None:
        return lambda f: FunctionHook(f, every, at_start)
    return FunctionHook(fn, every, at_start)


def due(h: Hook, step: int, last_step: int) -> bool:
    return step % h.every == 0 or step == last_step


@dataclasses.dataclass(frozen=True)
class TrainLogHook:
    """The train line of metrics.jsonl (mean loss and gradient norm since the last one, learning
    rate, tokens per second) and the progress bar's loss and rate.

    `steps_averaged` is how many steps the means are over: `every`, or fewer at the last step and
    at the first line after a resume from a step between two lines (the steps before it are in the
    interrupted run's window, not in any line)."""

    every: int

    def __call__(self, run: RunState, step: int) -> None:
        config = run.config
        tokens_per_step = config.data.batch_size * config.data.seq_len * config.optim.accumulate_steps
        elapsed = time.perf_counter() - run.window_start
        losses, norms = zip(*run.window, strict=True)
        rate = len(run.window) * tokens_per_step / elapsed
        run.writer.write(
            step,
            "train",
            loss=float(np.mean(losses)),
            grad_norm=float(np.mean(norms)),
            steps_averaged=len(run.window),
            learning_rate=float(run.schedule(step - 1)),
            tokens_per_second=rate,
        )
        if run.bar is not None:
            run.bar.set_postfix(loss=f"{np.mean(losses):.3f}", tok_s=f"{rate:,.0f}")
        run.window, run.window_start = [], time.perf_counter()


@dataclasses.dataclass(frozen=True)
class EvalHook:
    """Validation loss, accuracy or perplexity, and the task metrics (classification) over
    `config.eval_batches` batches: the eval line of metrics.jsonl, `run.last_eval`, and a log line."""

    every: int
    at_start: bool = True

    def __call__(self, run: RunState, step: int) -> None:
        config = run.config
        run.last_eval = evaluate(
            run.model, run.eval_step, run.data.eval_splits["eval"](), config.eval_batches, run.mesh
        )
        run.writer.write(step, "eval", **{k: v for k, v in run.last_eval.items() if k != "count"})
        if config.kind == "gpt":
            quality = f"perplexity {run.last_eval['perplexity']:.2f}"
        else:  # classification: accuracy (none for regression) and the task metrics; MLM: accuracy
            quality = ", ".join(
                f"{k} {v:.4f}" for k, v in run.last_eval.items() if k not in ("loss", "perplexity", "count")
            )
        run.log(f"step {step:>6}: validation loss {run.last_eval['loss']:.4f}, {quality}")


@dataclasses.dataclass(frozen=True)
class StabilizerHook:
    """sigmoid(m) of the cosine layers: per layer (the mean over heads) and per head, in metrics.jsonl."""

    every: int
    at_start: bool = True

    def __call__(self, run: RunState, step: int) -> None:
        stab = stabilizer_values(run.model)
        if stab:
            run.writer.write(step, "stabilizer", **{f"layer{i}": float(v.mean()) for i, v in enumerate(stab)})
            run.writer.write(
                step,
                "stabilizer_heads",
                **{f"layer{i}_head{h}": float(x) for i, v in enumerate(stab) for h, x in enumerate(v)},
            )


@dataclasses.dataclass(frozen=True)
class CheckpointHook:
    """{model, optimizer, step} + iterator state + config, through the Checkpointer.

    Called every step (every=1): the Checkpointer's manager applies `config.checkpoint_every`
    itself (Orbax's save policy, which also saves on a preemption notice); the last step always saves.
    """

    every: int = 1

    def __call__(self, run: RunState, step: int) -> None:
        if run.checkpointer.save(
            step,
            run.model,
            run.optimizer,
            run.data.train.get_state(),
            to_dict(run.config),
            force=step == run.config.steps,
        ):
            run.last_saved = step


def default_hooks(config: TrainConfig) -> list[Hook]:
    """The run's own hooks, in the order they run after a step: train log, evaluation, stabilizers,
    checkpoint. (Hooks given to train_and_evaluate run after these.)"""
    return [
        TrainLogHook(config.log_every),
        EvalHook(config.eval_every),
        StabilizerHook(config.eval_every),
        CheckpointHook(),
    ]
