"""Time and memory of causal cosine vs softmax attention (forward + backward) as the sequence grows.

    python benchmarks/attention_scaling.py [--seq-lens 256 1024 4096] [--out runs/attention_scaling]

Prints a table, writes results.json and scaling.png to --out. Memory is XLA's
compiled buffer assignment for one forward+backward call (arguments, outputs and
temporaries), plus the allocator's measured peak on a GPU. A configuration whose
compiled memory exceeds the device (or host) memory is reported, not run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: import `benchmarks` from the root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from tqdm import tqdm

import cottention_jax as ca
from benchmarks.measure import describe_device, device_peak_bytes, host_memory_bytes, median_time
from cottention_jax.memory import compiled_memory_bytes

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = {
    "cosine": lambda q, k, v, m: ca.cosine_attention(q, k, v, m, causal=True),
    "softmax": lambda q, k, v, m: jax.nn.dot_product_attention(q, k, v, is_causal=True),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--max-seconds", type=float, default=15.0, help="time budget per measurement")
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/attention_scaling"))
    return p.parse_args()


def memory_limit() -> int:
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    return int(stats["bytes_limit"]) if stats and "bytes_limit" in stats else int(0.8 * host_memory_bytes())


def measure(name, t, args):
    key = jax.random.PRNGKey(t)
    kq, kk, kv = jax.random.split(key, 3)
    shape = (args.batch, t, args.heads, args.dim)
    dtype = jnp.dtype(args.dtype)
    q, k, v = (jax.random.normal(kk_, shape, jnp.float32).astype(dtype) for kk_ in (kq, kk, kv))
    m = jnp.full((args.heads,), 0.5)
    attend = METHODS[name]
    loss = lambda q, k, v: jnp.sum(attend(q, k, v, m).astype(jnp.float32) ** 2)  # noqa: E731
    step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    row = {"method": name, "seq": t}
    try:
        row["compiled_bytes"] = compiled_memory_bytes(step, q, k, v)
    except Exception as err:  # noqa: BLE001  (an allocation or compile failure is a result)
        return {**row, "status": f"cannot compile: {type(err).__name__}"}
    if row["compiled_bytes"] and row["compiled_bytes"] > memory_limit():
        return {**row, "status": "exceeds memory"}
    try:
        row.update(median_time(step, q, k, v, repeats=args.repeats, max_seconds=args.max_seconds))
    except Exception as err:  # noqa: BLE001
        return {**row, "status": f"failed: {type(err).__name__}"}
    row["peak_bytes"] = device_peak_bytes()
    return {**row, "status": "ok"}


def print_table(rows, info):
    print(
        f"\ncausal attention, forward+backward: B={info['batch']} H={info['heads']} D={info['dim']} "
        f"{info['dtype']} on {info['device']} ({info['cpu_cores']} cores), jax {info['jax']}"
    )
    print(f"{'seq':>7} | {'cosine ms':>10} {'cosine MB':>10} | {'softmax ms':>11} {'softmax MB':>11} | speed-up")
    by = {(r["method"], r["seq"]): r for r in rows}
    for t in sorted({r["seq"] for r in rows}):
        cells, times = [], {}
        for name in ("cosine", "softmax"):
            r = by.get((name, t), {})
            mb = f"{r['compiled_bytes'] / 2**20:.0f}" if r.get("compiled_bytes") else "-"
            if r.get("status") == "ok":
                times[name] = r["median_s"]
                width = 10 if name == "cosine" else 11
                cells.append(f"{1e3 * r['median_s']:>{width}.1f} {mb:>{width}}")
            else:
                cells.append(f"{r.get('status', '-'):>{21 if name == 'cosine' else 23}}")
        ratio = f"{times['softmax'] / times['cosine']:.1f}x" if len(times) == 2 else "-"
        print(f"{t:>7} | {cells[0]} | {cells[1]} | {ratio:>8}")


def plot(rows, path):
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4))
    for name in METHODS:
        ok = [r for r in rows if r["method"] == name and r.get("status") == "ok"]
        mem = [r for r in rows if r["method"] == name and r.get("compiled_bytes")]
        ax_t.plot([r["seq"] for r in ok], [1e3 * r["median_s"] for r in ok], "o-", label=name)
        ax_m.plot([r["seq"] for r in mem], [r["compiled_bytes"] / 2**20 for r in mem], "o-", label=name)
    ax_m.axhline(memory_limit() / 2**20, color="gray", ls="--", label="memory limit")
    for ax, label in ((ax_t, "time per fwd+bwd (ms)"), (ax_m, "compiled memory (MiB)")):
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel=label)
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("causal cosine vs softmax attention")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    args = parse_args()
    info = {**describe_device(), **{k: getattr(args, k) for k in ("batch", "heads", "dim", "dtype")}}
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(t, name) for t in args.seq_lens for name in METHODS]
    with tqdm(jobs, desc="scaling", unit="config") as bar:
        for t, name in bar:
            bar.set_postfix(seq=t, method=name)
            rows.append(measure(name, t, args))
    print_table(rows, info)
    (args.out / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    plot(rows, args.out / "scaling.png")
    print(f"\nwrote {args.out / 'results.json'} and {args.out / 'scaling.png'}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    np.set_printoptions(precision=3)
    main()
