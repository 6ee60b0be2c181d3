"""GLUE: finetune one pretrained BERT on each task, and the results table in the Cottention paper's layout.

    results = run_glue("runs/bert-small", workdir_root="runs/glue")      # one run per task
    print(format_glue_table(results))

Each task is a `bert-classify` run of `configs.finetune_config(pretrain, "tfds:glue/<task>", init_from)`
(the task's TFDS dataset must be prepared in `$TFDS_DATA_DIR` or `~/tensorflow_datasets`: see `data.classification`), in
`<workdir_root>/<task>/`; a run that already finished there is only evaluated again (a workdir
resumes). The scores are the final validation metrics (MNLI: validation_matched; GLUE's test labels
are hidden). The average is GLUE's: one score per task (the mean of a task's two metrics for
MRPC, QQP and STS-B), then their mean.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from cottention_jax.configs import TrainConfig, apply_overrides, finetune_config, from_dict
from cottention_jax.data.glue import GLUE_TASKS, TASKS

__all__ = ["GLUE_TASKS", "format_glue_table", "run_glue"]

_SHORT = {"matthews_corrcoef": "MCC", "accuracy": "acc", "f1": "F1", "pearson": "Pearson", "spearman": "Spearman"}


def run_glue(
    pretrain_workdir: str | Path,
    base_config: TrainConfig | None = None,
    tasks: Sequence[str] = GLUE_TASKS,
    *,
    workdir_root: str | Path,
    overrides: Sequence[str] = (),
    progress: bool = True,
    log=print,
) -> dict[str, dict[str, float]]:
    """Finetune the bert-mlm run in `pretrain_workdir` on each GLUE task; {task: {metric: value}}.

    base_config: the pretraining config (None: the workdir's config.json); `overrides` ("steps=300",
    ...) apply to every finetuning config. Prints (through `log`) and returns the scores as
    fractions; the table is `format_glue_table(results)`.
    """
    from cottention_jax.train import train_and_evaluate  # the training stack, only when running

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown GLUE task(s) {unknown}; known: {sorted(TASKS)}")
    pretrain_workdir = Path(pretrain_workdir)
    if base_config is None:
        config_path = pretrain_workdir / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{config_path} does not exist: give the workdir of a finished bert-mlm run")
        base_config = from_dict(json.loads(config_path.read_text()))
    results = {}
    for task in tasks:
        config = apply_overrides(finetune_config(base_config, f"tfds:glue/{task}", str(pretrain_workdir)), overrides)
        summary = train_and_evaluate(config, Path(workdir_root) / task, progress=progress)
        scores = summary["final_eval"]
        results[task] = {m: float(scores[m]) for m in TASKS[task].metrics if m in scores}
        log(f"GLUE {TASKS[task].title}: " + ", ".join(f"{m} {v:.4f}" for m, v in results[task].items()))
    log(format_glue_table(results))
    return results


def _cell(task: str, scores: Mapping[str, float] | None) -> tuple[str, float | None]:
    """The table cell of a task ('88.0/84.0') and its GLUE score (the mean of its metrics), in percent."""
    metrics = TASKS[task].metrics
    if not scores or any(m not in scores for m in metrics):
        return "-", None
    values = [100.0 * float(scores[m]) for m in metrics]
    return "/".join(f"{v:.1f}" for v in values), sum(values) / len(values)


def format_glue_table(results: Mapping[str, Mapping[str, float]], name: str = "") -> str:
    """Header and one row: CoLA (MCC) | SST-2 (acc) | MRPC (F1/acc) | STS-B (Pearson/Spearman) | QQP (F1/acc)
    | MNLI-m (acc) | QNLI (acc) | RTE (acc) | Avg, scores in percent; "-" for a task not in `results`,
    and for the average unless all eight are there. `results`: {task: {metric: fraction}}."""
    titles = [f"{TASKS[t].title} ({'/'.join(_SHORT[m] for m in TASKS[t].metrics)})" for t in GLUE_TASKS]
    cells = [_cell(t, results.get(t)) for t in GLUE_TASKS]
    finite = [s for _, s in cells if s is not None and math.isfinite(s)]
    average = f"{sum(finite) / len(finite):.1f}" if len(finite) == len(cells) else "-"
    header = ["", *titles, "Avg"]
    row = [name, *(c for c, _ in cells), average]
    widths = [max(len(h), len(r)) for h, r in zip(header, row, strict=True)]
    return "\n".join(" | ".join(x.rjust(w) for x, w in zip(line, widths, strict=True)) for line in (header, row))
