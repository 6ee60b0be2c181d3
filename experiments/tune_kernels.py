"""Tune the Pallas kernels' launch parameters on this GPU and write a table the kernels pick up.

    python experiments/tune_kernels.py --head-dims 64 128 --dtype bfloat16
    python experiments/tune_kernels.py --head-dims 128 --quick             # 4 / 8 warps, 2 / 3 stages
    python experiments/tune_kernels.py --smoke --out /tmp/table.json       # CPU: interpret mode, tiny shapes

For each head dim, every candidate launch (block, warps, stages) of every kernel
(forward, dQ, dK~, dV) is timed alone at every chunk size, at a representative
shape (default B=8, T=16384, H=16). Each kernel keeps its fastest launch; the
chunk whose four kernels sum to the least time wins. The result is checked
against the float32 reference and timed end to end beside the default it
replaces. Launches that fail to compile (e.g. too much shared memory) are
recorded, not fatal. The algorithm: pallas_kernels/cosine_attn/tune.py.

Writes (merging with what is there) the user table that the kernels read
automatically, `~/.cache/cottention_jax/tuned_block_sizes.json`, or --out; set
COTTENTION_KERNEL_TABLE=<path> to point the kernels at another file. See
pallas_kernels/cosine_attn/launch_table.py for the format and the lookup order.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import tempfile

import jax
from tqdm import tqdm

from pallas_kernels.cosine_attn import launch_table, pallas, tune


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head-dims", type=int, nargs="+", default=[64, 128])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=16384)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--chunks", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--quick", action="store_true", help="fewer launches: 4 / 8 warps, 2 / 3 stages")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument(
        "--out", type=pathlib.Path, default=None, help=f"table to write (default {launch_table.user_table_path()})"
    )
    p.add_argument("--smoke", action="store_true", help="tiny shapes in interpret mode (any backend); for tests")
    args = p.parse_args(argv)
    if args.smoke:
        args.batch, args.seq, args.heads, args.chunks, args.repeats = 1, 64, 2, [16, 32], 2
        args.head_dims = [d for d in args.head_dims if d <= 32] or [16, 32]
        args.out = args.out or pathlib.Path(tempfile.mkdtemp()) / "tuned_block_sizes.json"
    return args


def _launches(args, padded_dim):
    if args.smoke:  # two launches per kernel: enough to exercise the choice
        return [pallas.KernelLaunch(16, 4, 2), pallas.KernelLaunch(min(32, padded_dim), 4, 2)]
    return tune.candidate_launches(padded_dim, quick=args.quick)


def _print_trials(trials):
    print(f"\n{'kernel':>8} {'chunk':>5} {'block':>5} {'warps':>5} {'stages':>6} {'ms':>9}  status")
    for t in sorted(trials, key=lambda t: (t.kernel, t.chunk, t.seconds or float("inf"))):
        ms = f"{1e3 * t.seconds:9.3f}" if t.seconds is not None else f"{'-':>9}"
        print(
            f"{t.kernel:>8} {t.chunk:>5} {t.launch.block:>5} {t.launch.num_warps:>5} "
            f"{t.launch.num_stages:>6} {ms}  {t.error or 'ok'}"
        )


def tune_head_dim(args, d: int) -> dict:
    shape = tune.TuneShape(args.batch, args.seq, args.heads, d, args.dtype)
    launches = _launches(args, shape.padded_dim)
    jobs = len(args.chunks) * len(launch_table.KERNELS) * len(launches)
    trials = list(
        tqdm(
            tune.run_trials(shape, args.chunks, launches, interpret=args.smoke, repeats=args.repeats),
            total=jobs,
            desc=f"d={d} {args.dtype}",
            unit="launch",
        )
    )
    _print_trials(trials)
    sizes, kernel_seconds = tune.best_block_sizes(trials)
    error = tune.check_block_sizes(shape, sizes, interpret=args.smoke)
    default = pallas.BlockSizes.get_default(args.dtype, d, d)
    timing = {
        "tuned": tune.time_block_sizes(shape, sizes, interpret=args.smoke, repeats=args.repeats),
        "previous_default": tune.time_block_sizes(shape, default, interpret=args.smoke, repeats=args.repeats),
    }
    print(f"d={d}: chosen {sizes}\n  max relative error vs the float32 reference {error:.2e}")
    for name, t in timing.items():
        print(f"  {name:>16}: forward {1e3 * t['forward']:.3f} ms, forward+backward {1e3 * t['fwd_bwd']:.3f} ms")
    measured = {
        "shape": {"batch": args.batch, "seq": args.seq, "heads": args.heads, "head_dim": d},
        "kernel_ms": {k: round(1e3 * s, 4) for k, s in kernel_seconds.items()},
        **{f"{name}_{kind}_ms": round(1e3 * s, 4) for name, t in timing.items() for kind, s in t.items()},
        "max_rel_error": error,
        "failed_launches": sum(t.error is not None for t in trials),
    }
    source = (
        f"experiments/tune_kernels.py{' --smoke (interpret mode: not a measurement)' if args.smoke else ''}, "
        f"B={args.batch} T={args.seq} H={args.heads}, jax {jax.__version__}, {datetime.date.today()}"
    )
    return tune.make_entry(jax.devices()[0], shape, sizes, measured, source)


def main(argv=None):
    args = parse_args(argv)
    if not args.smoke and jax.default_backend() != "gpu":
        sys.exit(
            f"tune_kernels.py measures GPU kernels; JAX sees {jax.default_backend()}. "
            "Use --smoke to check the logic on CPU."
        )
    out = args.out or launch_table.user_table_path()
    entries = [tune_head_dim(args, d) for d in args.head_dims]
    old = launch_table.load_table(out) if out.is_file() else []
    launch_table.write_table(out, launch_table.merge_entries(old, entries))
    used = (
        "it is read automatically"
        if out == launch_table.user_table_path()
        else f"point the kernels at it with {launch_table.ENV_VAR}={out}"
    )
    print(f"wrote {len(entries)} entr{'y' if len(entries) == 1 else 'ies'} to {out} ({used})")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
