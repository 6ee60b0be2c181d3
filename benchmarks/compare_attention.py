"""Does cosine attention match softmax? A tuned, multi-seed comparison of attention variants (issue 22).

    python benchmarks/compare_attention.py                              # gpt-ablation-cpu, the whole protocol
    python benchmarks/compare_attention.py --preset gpt-ablation-gpu   # the same protocol, larger model, on a GPU
    python benchmarks/compare_attention.py --variants softmax cosine --lrs 1e-3 3e-3 1e-2 --seeds 0 1 2
    python benchmarks/compare_attention.py --smoke --root /tmp/cmp      # 2 variants, a few steps (the test)

Protocol, the same model, data order (data.seed) and token budget (steps x batch x seq_len) for all:
  1. sweep: every variant at every learning rate (--lrs), seed --seeds[0];
  2. seeds: every variant at its best rate (lowest final validation loss) with the other --seeds.
Each run trains in <root>/runs/<variant>/lr<lr>-seed<seed>-steps<steps>/ and writes result.json
when done: a finished run is never re-run, an interrupted one resumes from its checkpoint, and a
diverged one is recorded as such. With --budget-minutes, no run starts after the budget is spent
(run the same command again to continue). Writes <root>/results.json (every run and the summary),
<root>/compare.md (the table), <root>/loss_curves.png and, for the learned stabilizers,
<root>/stabilizers.png.

Statistics: per variant, the mean and sample std (ddof 1) of the final validation loss over seeds at
its best rate. Differences to softmax, and the cosine/softmax perplexity ratio exp(mean loss
difference), come with a 95% Welch t-interval (unequal variances; seeds are not paired, since
their initialisations differ by architecture); a difference "exceeds the seed spread" when its
interval excludes 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: import `benchmarks` from the root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from cottention_jax.configs import TrainConfig, train_preset  # noqa: E402
from cottention_jax.metrics import new_figure, read_metrics  # noqa: E402
from cottention_jax.train import TrainingDivergedError, train_and_evaluate  # noqa: E402

__all__ = ["VARIANTS", "mean_std", "perplexity_ratio", "run_protocol", "t_quantile", "variant_config", "welch_interval"]

# variant -> the model fields it sets (the rest are the preset's)
VARIANTS: dict[str, dict] = {
    "softmax": {"attention": "softmax"},
    "cosine": {"attention": "cosine", "stabilizer": "learned", "stabilize": "value"},  # the paper's
    "cosine-none": {"attention": "cosine", "stabilizer": "none", "stabilize": "value"},  # p = 0
    "cosine-length": {"attention": "cosine", "stabilizer": "length", "stabilize": "value"},  # p = 1
    "cosine-query": {"attention": "cosine", "stabilizer": "learned", "stabilize": "query"},
    "taylor2": {"attention": "taylor2"},
    "linear-elu": {"attention": "linear-elu"},
}
LEARNED = ("cosine", "cosine-query")
PAPER_RATIO = 1.13  # Cottention paper, GPT 300M: perplexity 11.6 (cosine) / 10.3 (softmax)
# 500 steps: 35 runs (7 variants x (3 rates + 2 more seeds)) of 1.02M tokens each, about an hour on an
# unloaded 2-core CPU (~11.5k tokens/s, plus compilation and evaluations). The CPU rates were first 1e-3..1e-2;
# every variant was best at 1e-2 and improved monotonically from 1e-3, so the sweep moved up half a decade.
DEFAULT_STEPS = {"gpt-ablation-cpu": 500, "gpt-ablation-gpu": 1500}
DEFAULT_LRS = {"gpt-ablation-cpu": [3e-3, 1e-2, 3e-2], "gpt-ablation-gpu": [3e-4, 1e-3, 3e-3]}
SMOKE = {"preset": "gpt-tiny", "variants": ["softmax", "cosine"], "steps": 4, "lrs": [1e-3, 1e-2], "seeds": [0, 1]}


# ----------------------------------------------------------------------------- statistics


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for fewer than 2 values or a diverged run's inf)."""
    finite = all(map(math.isfinite, values))
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 and finite else math.nan


def _t_cdf(x: float, df: float) -> float:
    """Student t CDF for x >= 0: 1/2 + the integral of its density over [0, x] (composite Simpson, 2000 panels)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    pdf = lambda u: math.exp(log_c - (df + 1) / 2 * math.log1p(u * u / df))  # noqa: E731
    n, h = 2000, x / 2000
    s = pdf(0.0) + pdf(x) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
    return 0.5 + s * h / 3


def t_quantile(p: float, df: float) -> float:
    """The p-quantile (0.5 <= p < 1) of Student's t with df > 0 degrees of freedom (bisection on the CDF)."""
    if not (0.5 <= p < 1 and df > 0):
        raise ValueError(f"t_quantile needs 0.5 <= p < 1 and df > 0; got p={p!r}, df={df!r}")
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def welch_interval(a: list[float], b: list[float], level: float = 0.95) -> dict:
    """mean(a) - mean(b) with its Welch t-interval (unequal variances, Welch-Satterthwaite df).

    NaN bounds when either sample has fewer than 2 values; a zero standard error gives [diff, diff].
    """
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "low": math.nan, "high": math.nan, "df": math.nan}
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "low": diff, "high": diff, "df": math.inf}
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t_quantile(0.5 + level / 2, df) * se
    return {"diff": diff, "low": diff - half, "high": diff + half, "df": df}


def perplexity_ratio(losses_a: list[float], losses_b: list[float], level: float = 0.95) -> dict:
    """ppl(a) / ppl(b) = exp(mean loss a - mean loss b), its interval the exp of the Welch interval."""
    w = welch_interval(losses_a, losses_b, level)
    return {"ratio": math.exp(w["diff"]), "low": math.exp(w["low"]), "high": math.exp(w["high"]), "df": w["df"]}


# ----------------------------------------------------------------------------- runs


def variant_config(base: TrainConfig, variant: str, lr: float, seed: int, steps: int) -> TrainConfig:
    """`base` with the variant's attention fields, peak learning rate, init seed and steps (data order unchanged)."""
    every = max(1, steps // 10)
    return dataclasses.replace(
        base,
        model=dataclasses.replace(base.model, **VARIANTS[variant]),
        optim=dataclasses.replace(base.optim, learning_rate=lr),
        seed=seed,
        steps=steps,
        eval_every=every,
        checkpoint_every=max(1, steps // 4),
        log_every=max(1, min(base.log_every, every)),
    )


def run_dir(root: Path, variant: str, lr: float, seed: int, steps: int) -> Path:
    return root / "runs" / variant / f"lr{lr:g}-seed{seed}-steps{steps}"


def train_once(config: TrainConfig, variant: str, workdir: Path, progress: bool) -> dict:
    """Train one run (resuming if interrupted) and write its result.json; a divergence is a result too."""
    start = time.perf_counter()
    row = {
        "variant": variant,
        "lr": config.optim.learning_rate,
        "seed": config.seed,
        "steps": config.steps,
        "workdir": str(workdir),
    }
    try:
        summary = train_and_evaluate(config, workdir, progress=progress)
        row.update(
            diverged=False,
            val_loss=summary["final_eval"]["loss"],
            val_perplexity=summary["final_eval"]["perplexity"],
            parameters=summary["parameters"],
        )
    except TrainingDivergedError as e:
        row.update(diverged=True, val_loss=math.inf, val_perplexity=math.inf, error=str(e).splitlines()[0])
    train = [r for r in read_metrics(workdir / "metrics.jsonl", log=None) if r["split"] == "train"]
    rates = [r["tokens_per_second"] for r in train[1:]] or [r["tokens_per_second"] for r in train] or [math.nan]
    row.update(seconds=time.perf_counter() - start, tokens_per_second=statistics.median(rates))
    (workdir / "result.json").write_text(json.dumps(row, indent=1))
    return row


_clock = time.monotonic  # the budget's clock (tests replace it)


class BudgetSpent(Exception):
    """No time left in --budget-minutes to start another run."""


def run_protocol(
    base: TrainConfig,
    variants: list[str],
    lrs: list[float],
    seeds: list[int],
    steps: int,
    root: str | Path,
    *,
    budget_minutes: float = 0,
    progress: bool = True,
    log=print,
) -> dict:
    """Sweep, then seeds at each variant's best rate; returns {"runs": [...], "best_lr": {...},
    "complete": bool, "trained": number of runs trained (or resumed) by this call}."""
    root = Path(root)
    deadline = _clock() + budget_minutes * 60 if budget_minutes else math.inf
    runs: list[dict] = []
    trained = 0

    def get(variant, lr, seed):
        nonlocal trained
        workdir = run_dir(root, variant, lr, seed, steps)
        done = workdir / "result.json"
        if done.exists():
            row = json.loads(done.read_text())
        else:
            if _clock() > deadline:
                raise BudgetSpent
            log(f"[compare] {variant} lr={lr:g} seed={seed}: training {steps} steps in {workdir}")
            row = train_once(variant_config(base, variant, lr, seed, steps), variant, workdir, progress)
            trained += 1
        runs.append(row)
        return row

    best_lr: dict[str, float] = {}
    complete = True
    try:
        for variant in variants:  # 1. the sweep, first seed
            losses = {lr: get(variant, lr, seeds[0])["val_loss"] for lr in lrs}
            best_lr[variant] = min(lrs, key=lambda lr: (losses[lr], lr))
        for variant in variants:  # 2. the other seeds at the best rate
            for seed in seeds[1:]:
                get(variant, best_lr[variant], seed)
    except BudgetSpent:
        complete = False
        log(f"[compare] --budget-minutes {budget_minutes:g} spent: run the same command again to continue")
    return {"runs": runs, "best_lr": best_lr, "complete": complete, "trained": trained}


# ----------------------------------------------------------------------------- the report


def summarize(result: dict, lrs: list[float]) -> list[dict]:
    """One row per swept variant: its best rate, mean/std validation loss over seeds there, the
    difference to softmax with its interval, and the sweep's losses."""
    rows = []
    for variant, lr in result["best_lr"].items():
        at_best = [r for r in result["runs"] if r["variant"] == variant and r["lr"] == lr]
        losses = [r["val_loss"] for r in at_best]
        mean, std = mean_std(losses)
        sweep = {
            f"{r['lr']:g}": r["val_loss"]
            for r in result["runs"]
            if r["variant"] == variant and r["seed"] == at_best[0]["seed"]
        }
        rows.append(
            {
                "variant": variant,
                "best_lr": lr,
                "at_edge": lr in (min(lrs), max(lrs)) and len(lrs) > 1,
                "seeds": len(losses),
                "val_loss_mean": mean,
                "val_loss_std": std,
                "val_perplexity": math.exp(mean) if math.isfinite(mean) else math.inf,
                "diverged_runs": sum(r["diverged"] for r in at_best),
                "sweep": sweep,
                "losses": losses,
                "tokens_per_second": statistics.median(r["tokens_per_second"] for r in at_best),
            }
        )
    ref = next((r for r in rows if r["variant"] == "softmax"), None)
    for r in rows:
        if ref is not None and r is not ref and all(map(math.isfinite, r["losses"] + ref["losses"])):
            r["vs_softmax"] = welch_interval(r["losses"], ref["losses"])
            r["ppl_ratio"] = perplexity_ratio(r["losses"], ref["losses"])
    return rows


def _fmt_interval(w: dict | None, fmt: str) -> str:
    if w is None:
        return "-"
    value = w.get("diff", w.get("ratio"))
    if math.isnan(w["low"]):
        return format(value, fmt)
    return f"{value:{fmt}} [{w['low']:{fmt}}, {w['high']:{fmt}}]"


def format_table(rows: list[dict]) -> str:
    """The Markdown table, best mean validation loss first."""
    lines = [
        "| attention | best lr | sweep (val loss at each lr, seed 0) | seeds | val loss (mean ± std) | "
        "val ppl | Δ loss vs softmax [95% CI] | ppl ratio vs softmax [95% CI] | beyond seed spread? |",
        "|---|---:|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in sorted(rows, key=lambda r: r["val_loss_mean"]):
        sweep = ", ".join(
            f"{lr}: {loss:.3f}" if math.isfinite(loss) else f"{lr}: diverged" for lr, loss in r["sweep"].items()
        )
        w = r.get("vs_softmax")
        beyond = "-" if w is None or math.isnan(w["low"]) else ("yes" if w["low"] > 0 or w["high"] < 0 else "no")
        edge = " (edge)" if r["at_edge"] else ""
        std = "" if math.isnan(r["val_loss_std"]) else f" ± {r['val_loss_std']:.3f}"
        lines.append(
            f"| {r['variant']} | {r['best_lr']:g}{edge} | {sweep} | {r['seeds']} | "
            f"{r['val_loss_mean']:.3f}{std} | {r['val_perplexity']:.1f} | {_fmt_interval(w, '+.3f')} | "
            f"{_fmt_interval(r.get('ppl_ratio'), '.3f')} | {beyond} |"
        )
    return "\n".join(lines)


def _eval_curve(workdir: str) -> tuple[list[int], list[float]]:
    evals = [e for e in read_metrics(Path(workdir) / "metrics.jsonl", log=None) if e["split"] == "eval"]
    return [e["step"] for e in evals], [e["loss"] for e in evals]


def stabilizer_curves(result: dict, variant: str) -> dict[str, tuple[list[int], list[float]]]:
    """Per layer, the mean over seeds (at the best rate) of sigmoid(m) averaged over heads, over steps."""
    lr = result["best_lr"][variant]
    per_step: dict[str, dict[int, list[float]]] = {}
    for r in result["runs"]:
        if r["variant"] == variant and r["lr"] == lr:
            for rec in read_metrics(Path(r["workdir"]) / "metrics.jsonl", log=None):
                if rec["split"] == "stabilizer":
                    for key, value in rec.items():
                        if key.startswith("layer"):
                            per_step.setdefault(key, {}).setdefault(rec["step"], []).append(value)
    return {layer: (sorted(s), [statistics.fmean(s[k]) for k in sorted(s)]) for layer, s in sorted(per_step.items())}


def plot_loss_curves(result: dict, rows: list[dict], png: Path, title: str) -> None:
    """Validation loss over steps per variant at its best rate: the mean over seeds, the band min..max."""
    from matplotlib import colormaps  # noqa: PLC0415  (the [train] extra)

    fig = new_figure(figsize=(9, 5))
    ax = fig.subplots()
    colors = colormaps["tab10"].colors
    for i, row in enumerate(sorted(rows, key=lambda r: r["val_loss_mean"])):
        curves = [
            _eval_curve(r["workdir"])
            for r in result["runs"]
            if r["variant"] == row["variant"] and r["lr"] == row["best_lr"] and not r["diverged"]
        ]
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)
        steps = curves[0][0][:n]
        by_step = list(zip(*(c[1][:n] for c in curves), strict=True))
        ax.plot(
            steps,
            [statistics.fmean(v) for v in by_step],
            "o-",
            ms=3,
            color=colors[i % 10],
            label=f"{row['variant']} (lr {row['best_lr']:g}: {row['val_loss_mean']:.3f})",
        )
        ax.fill_between(steps, [min(v) for v in by_step], [max(v) for v in by_step], color=colors[i % 10], alpha=0.2)
    ax.set_ylim(top=min(ax.get_ylim()[1], 6.5))  # the shared first evaluation would flatten the rest
    ax.set(xlabel="step", ylabel="validation loss (nats)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def plot_stabilizers(curves: dict[str, dict], best_lr: dict[str, float], png: Path) -> None:
    """sigmoid(m) per layer over steps, one panel per learned-stabilizer variant (at its best rate)."""
    fig = new_figure(figsize=(5 * len(curves), 4))
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (variant, layers) in zip(axes, curves.items(), strict=True):
        for layer, (steps, values) in layers.items():
            ax.plot(steps, values, "o-", ms=3, label=layer)
        ax.set(
            xlabel="step", ylabel="sigmoid(m), mean over heads and seeds", title=f"{variant} (lr {best_lr[variant]:g})"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def write_report(result: dict, base: TrainConfig, lrs: list[float], steps: int, root: Path, preset: str) -> str:
    from benchmarks.measure import describe_device  # noqa: PLC0415

    info = describe_device()
    rows = summarize(result, lrs)
    tokens = steps * base.data.batch_size * base.data.seq_len
    header = (
        f"Preset {preset}: GPT {base.model.num_layers}L/{base.model.d_model}d/{base.model.num_heads}h, "
        f"{steps} steps of {base.data.batch_size}x{base.data.seq_len} tokens ({tokens:,} per run) on "
        f"{base.data.corpus}, data seed {base.data.seed}; learning rates {', '.join(f'{x:g}' for x in lrs)}; "
        f"{info['device']} ({info['cpu_cores']} cores), jax {info['jax']}"
    )
    stab = {v: stabilizer_curves(result, v) for v in LEARNED if v in result["best_lr"]}
    stab = {v: c for v, c in stab.items() if c}
    lines = [header, "", format_table(rows), ""]
    cosine = next((r for r in rows if r["variant"] == "cosine" and "ppl_ratio" in r), None)
    if cosine is not None:
        how = (
            "one seed each: no interval"
            if math.isnan(cosine["ppl_ratio"]["low"])
            else "[95% Welch t-interval over seeds]"
        )
        lines.append(
            f"cosine/softmax perplexity ratio: {_fmt_interval(cosine['ppl_ratio'], '.3f')} "
            f"({how}); the paper's: {PAPER_RATIO} (GPT 300M, 11.6 / 10.3)."
        )
    for v, layers in stab.items():
        finals = ", ".join(f"{layer} {values[-1]:.3f}" for layer, (_, values) in layers.items())
        lines.append(f"{v}: final sigmoid(m) per layer (mean over heads and seeds): {finals}.")
    if not result["complete"]:
        lines.append("INCOMPLETE: the budget ran out; run the same command again to continue.")
    seconds = sum(r["seconds"] for r in result["runs"])
    lines.append(f"{len(result['runs'])} runs, {seconds / 60:.1f} minutes of training in all (as measured per run).")
    text = "\n".join(lines) + "\n"
    (root / "compare.md").write_text(text)
    (root / "results.json").write_text(
        json.dumps(
            {"preset": preset, "steps": steps, "lrs": lrs, "header": header, **result, "summary": rows},
            indent=1,
            default=str,
        )
    )
    if rows:
        plot_loss_curves(
            result,
            rows,
            root / "loss_curves.png",
            f"{preset}, {steps} steps: mean over seeds at each best lr (band: min..max)",
        )
    if stab:
        plot_stabilizers(stab, result["best_lr"], root / "stabilizers.png")
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="gpt-ablation-cpu (default) or gpt-ablation-gpu")
    p.add_argument("--variants", nargs="+", default=None, help=f"of {', '.join(VARIANTS)} (default: all)")
    p.add_argument("--steps", type=int, default=None, help="steps per run (default: 500 on cpu, 1500 on gpu)")
    p.add_argument("--lrs", nargs="+", type=float, default=None, help="peak learning rates of the sweep")
    p.add_argument(
        "--seeds", nargs="+", type=int, default=None, help="init seeds; the first is the sweep's (default 0 1 2)"
    )
    p.add_argument("--root", default=None, help="default runs/compare-<preset>")
    p.add_argument("--budget-minutes", type=float, default=0, help="start no run after this (0: no limit)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="preset overrides, e.g. data.corpus=mixed",
    )
    p.add_argument("--smoke", action="store_true", help="tiny: gpt-tiny, softmax and cosine, 4 steps, 2 rates, 2 seeds")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    smoke = SMOKE if args.smoke else {}
    preset = args.preset or smoke.get("preset", "gpt-ablation-cpu")
    variants = args.variants or smoke.get("variants", list(VARIANTS))
    steps = args.steps or smoke.get("steps") or DEFAULT_STEPS.get(preset)
    lrs = args.lrs or smoke.get("lrs") or DEFAULT_LRS.get(preset)
    seeds = args.seeds or smoke.get("seeds", [0, 1, 2])
    unknown = [v for v in variants if v not in VARIANTS]
    problem = (
        f"--variants: unknown {unknown}; choose from {list(VARIANTS)}"
        if unknown
        else "--steps must be >= 1"
        if steps is not None and steps < 1
        else "--lrs must be > 0"
        if lrs and min(lrs) <= 0
        else "--variants, --lrs and --seeds must not repeat a value"
        if len(set(variants)) < len(variants) or (lrs and len(set(lrs)) < len(lrs)) or len(set(seeds)) < len(seeds)
        else None
    )
    try:
        base = train_preset(preset, args.overrides)
    except (KeyError, ValueError) as e:
        problem = problem or f"--preset/--set: {e}"
    steps = steps or (None if problem else base.steps)
    lrs = lrs or (
        None if problem else [base.optim.learning_rate / 3, base.optim.learning_rate, base.optim.learning_rate * 3]
    )
    if problem:
        print(f"compare_attention: {problem}", file=sys.stderr)
        return 2
    root = Path(args.root or f"runs/compare-{preset}")
    if not args.root and args.smoke:
        root = Path("runs/compare-smoke")
    root.mkdir(parents=True, exist_ok=True)
    result = run_protocol(
        base, variants, lrs, seeds, steps, root, budget_minutes=args.budget_minutes, progress=not args.no_progress
    )
    text = write_report(result, base, lrs, steps, root, preset)
    print("\n" + text)
    print(
        f"trained {result['trained']} run(s) now; wrote {root / 'compare.md'}, {root / 'results.json'}, "
        f"{root / 'loss_curves.png'}"
    )
    return 0 if result["complete"] else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
