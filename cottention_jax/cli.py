"""Command-line front end shared by the experiment scripts: presets, `--set key=value`, workdir."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

from cottention_jax.configs import TRAIN_PRESETS, apply_overrides, finetune_config, to_dict, train_preset

__all__ = ["train_cli"]


def _parser(description: str, default_preset: str, kinds: tuple[str, ...], finetune: bool):
    presets = sorted(n for n, c in TRAIN_PRESETS.items() if c.kind in kinds)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Examples of --set: model.attention=softmax steps=500 "
                                       "optim.learning_rate=3e-4 data.corpus=mixed sharding=data "
                                       "model.dtype=bfloat16 optim.accumulate_steps=4")
    p.add_argument("--preset", default=default_preset, choices=presets, help="named configuration")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field (repeatable)")
    p.add_argument("--workdir", default=None, help="checkpoints, metrics and plots (default runs/<preset>); "
                                                   "an existing workdir resumes")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    if finetune:
        p.add_argument("--finetune", action="store_true",
                       help="classification finetuning of the pretrained encoder instead of MLM pretraining")
        p.add_argument("--task", default="sentiment", choices=["sentiment", "paraphrase"])
        p.add_argument("--init-from", default=None,
                       help="pretraining workdir to start from (default: runs/<preset>)")
    return p


def train_cli(argv: Sequence[str] | None, *, description: str, default_preset: str,
              kinds: tuple[str, ...], finetune: bool = False) -> dict | None:
    """Parse argv, resolve the config and run `train_and_evaluate`; returns its summary."""
    args = _parser(description, default_preset, kinds, finetune).parse_args(argv)
    config = train_preset(args.preset)
    workdir = args.workdir or f"runs/{args.preset}"
    if finetune and args.finetune:
        init_from = args.init_from or f"runs/{args.preset}"
        config = finetune_config(config, args.task, init_from)
        workdir = args.workdir or f"runs/{args.preset}-{args.task}"
    config = apply_overrides(config, args.overrides)
    if args.print_config:
        print(json.dumps(to_dict(config), indent=1))
        return None
    from cottention_jax.train import train_and_evaluate  # noqa: PLC0415  (jax start-up after --help)
    summary = train_and_evaluate(config, workdir, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in summary.items() if k != "sample"}, indent=1))
    if "sample" in summary:
        print("\n--- generated sample (RNN decoding) ---\n" + summary["sample"])
    return summary
