"""Softmax attention as an RNN: train the same small GPT with each attention variant and compare.

    python benchmarks/softmax_rnn_ablation.py                                 # CPU preset, all variants
    python benchmarks/softmax_rnn_ablation.py --preset gpt-ablation-gpu      # a larger model on a GPU
    python benchmarks/softmax_rnn_ablation.py --variants softmax taylor2 linear-elu --set steps=100

Same data, steps and seeds for every variant. Writes <root>/ablation.json, ablation.md and
loss_curves.png; each variant's run is in <root>/<variant>/ (re-running resumes).
"""

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: import `benchmarks` from the root
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from benchmarks.ablation import format_table, plot_loss_curves, run_ablation  # noqa: E402
from benchmarks.measure import describe_device  # noqa: E402
from cottention_jax.configs import train_preset  # noqa: E402

DEFAULT_VARIANTS = [
    "softmax",
    "cosine",
    "taylor1",
    "taylor2",
    "taylor4",
    "taylor2-l2norm",
    "taylor2-rms",
    "taylor2-layernorm",
    "taylor2-none",
    "taylor2-position",
    "taylor2-detached",
    "taylor2-gate",
    "linear-elu",
    "linear-relu",
    "linear-cosine",
]


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt-ablation-cpu")
    p.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--root", default=None, help="default runs/ablation-<preset>")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    root = Path(args.root or f"runs/ablation-{args.preset}")
    base = train_preset(args.preset, args.overrides)
    rows = run_ablation(base, args.variants, root, progress=not args.no_progress)
    info = describe_device()
    header = (
        f"GPT {base.model.num_layers}L/{base.model.d_model}d/{base.model.num_heads}h, {base.steps} steps of "
        f"{base.data.batch_size}x{base.data.seq_len} tokens on {base.data.corpus}, seed {base.seed}; "
        f"{info['device']} ({info['cpu_cores']} cores), jax {info['jax']}"
    )
    table = format_table(rows)
    (root / "ablation.md").write_text(header + "\n\n" + table + "\n")
    plot_loss_curves(rows, root / "loss_curves.png", title=header)
    print("\n" + header + "\n\n" + table)
    print(f"\nwrote {root / 'ablation.md'}, {root / 'ablation.json'} and {root / 'loss_curves.png'}")


if __name__ == "__main__":
    main(sys.argv[1:])
