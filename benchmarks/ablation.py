"""Compare attention variants by training the same GPT with each: same data, steps and seeds.

Used by benchmarks/softmax_rnn_ablation.py. For every variant the run lives in
<root>/<variant>/ (so an interrupted ablation resumes), and one row per variant
records the final validation loss and perplexity, the training throughput
(median tokens/s over logging windows, the first, compiling one excluded), XLA's
compiled memory for one training step, and the device's peak memory (GPU).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from benchmarks.measure import device_peak_bytes
from cottention_jax.configs import TrainConfig
from cottention_jax.memory import compiled_memory_bytes
from cottention_jax.metrics import new_figure, read_metrics
from cottention_jax.objectives import LOSSES
from cottention_jax.train import build_model, train_and_evaluate

__all__ = ["format_table", "plot_loss_curves", "run_ablation", "train_step_memory_bytes"]


def train_step_memory_bytes(config: TrainConfig) -> int | None:
    """Compiled memory (arguments + outputs + temporaries) of one forward+backward of the training loss."""
    model = build_model(config)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    b, t = config.data.batch_size, config.data.seq_len
    batch = {
        "inputs": jax.ShapeDtypeStruct((b, t), jnp.int32),
        "targets": jax.ShapeDtypeStruct((b, t), jnp.int32),
        "weights": jax.ShapeDtypeStruct((b, t), jnp.float32),
    }

    def loss(params, batch):
        return LOSSES[config.kind](nnx.merge(graphdef, params, rest), batch)[0]

    return compiled_memory_bytes(jax.jit(jax.value_and_grad(loss)), params, batch)


def run_ablation(base: TrainConfig, variants: list[str], root: str | Path, progress: bool = True) -> list[dict]:
    """Train `base` once per attention variant under root/<variant>; one result row per variant."""
    rows = []
    for variant in variants:
        config = dataclasses.replace(base, model=dataclasses.replace(base.model, attention=variant))
        workdir = Path(root) / variant
        summary = train_and_evaluate(config, workdir, progress=progress)
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=summary["vocab_size"]))
        train = [r for r in read_metrics(workdir / "metrics.jsonl") if r["split"] == "train"]
        rates = [r["tokens_per_second"] for r in train[1:]] or [r["tokens_per_second"] for r in train]
        memory = train_step_memory_bytes(config)
        peak = device_peak_bytes()
        rows.append(
            {
                "variant": variant,
                "val_loss": summary["final_eval"]["loss"],
                "val_perplexity": summary["final_eval"]["perplexity"],
                "tokens_per_second": statistics.median(rates),
                "step_memory_MiB": None if memory is None else memory / 2**20,
                "device_peak_MiB": None if peak is None else peak / 2**20,
                "parameters": summary["parameters"],
                "workdir": str(workdir),
            }
        )
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "ablation.json").write_text(json.dumps(rows, indent=1))
    return rows


def format_table(rows: list[dict]) -> str:
    """A Markdown table, best validation loss first."""
    lines = [
        "| attention | val loss | val perplexity | tokens/s | step memory (MiB) | parameters |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["val_loss"]):
        mem = "-" if r["step_memory_MiB"] is None else f"{r['step_memory_MiB']:.0f}"
        lines.append(
            f"| {r['variant']} | {r['val_loss']:.3f} | {r['val_perplexity']:.1f} | "
            f"{r['tokens_per_second']:,.0f} | {mem} | {r['parameters']:,} |"
        )
    return "\n".join(lines)


def plot_loss_curves(rows: list[dict], png_path: str | Path, title: str = "") -> None:
    """Validation loss over steps, one line per variant."""
    from matplotlib import colormaps  # noqa: PLC0415  (the [train] extra)

    fig = new_figure(figsize=(9, 5))
    ax = fig.subplots()
    colors = colormaps["tab20"].colors  # distinct colours for up to 20 variants
    for i, r in enumerate(sorted(rows, key=lambda r: r["val_loss"])):
        evals = [e for e in read_metrics(Path(r["workdir"]) / "metrics.jsonl") if e["split"] == "eval"]
        ax.plot(
            [e["step"] for e in evals],
            [e["loss"] for e in evals],
            "o-",
            ms=3,
            color=colors[i % 20],
            label=f"{r['variant']} ({r['val_loss']:.3f})",
        )
    ax.set_ylim(top=min(ax.get_ylim()[1], 6.5))  # the shared first evaluation would flatten the rest
    ax.set(xlabel="step", ylabel="validation loss (nats)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
