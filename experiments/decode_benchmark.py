"""Per-token decode latency and decode-state memory: cosine (RNN state) vs softmax (KV cache).

    python experiments/decode_benchmark.py [--preset small] [--contexts 1024 8192 32768]

For each context length C the model prefills a random prompt of C tokens (in
chunks, through the same decode path), then the jitted single-token step is
timed (median of --repeats calls after warm-up). Memory is the size of the
decode state and XLA's compiled memory for one step. Writes results.json to --out.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm import tqdm

from cottention_jax import decoding
from cottention_jax.benchmark import compiled_memory_bytes, describe_device, median_time
from cottention_jax.models import GPT, gpt_config


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--chunk", type=int, default=512, help="prefill chunk length")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/decode_benchmark"))
    return p.parse_args()


def measure(attention, context, args):
    cfg = gpt_config(args.preset, attention=attention, max_len=context + 16)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    model.eval()
    model.init_cache(args.batch, context + 16)
    prompt = jax.random.randint(jax.random.PRNGKey(context), (args.batch, context), 0, cfg.vocab_size)
    step, cache = decoding.make_decode_step(model)
    for start in range(0, context, args.chunk):          # prefill in chunks, through the decode path
        logits, cache = step(cache, prompt[:, start:start + args.chunk])
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    timing = median_time(step, cache, token, warmup=3, repeats=args.repeats)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    return {"attention": attention, "context": context, "ms_per_token": 1e3 * timing["median_s"],
            "state_MiB": state_bytes / 2**20,
            "step_compiled_MiB": compiled_memory_bytes(step, cache, token) / 2**20, "runs": timing["runs"]}


def main():
    args = parse_args()
    info = {**describe_device(), "preset": args.preset, "batch": args.batch}
    rows = []
    jobs = [(a, c) for a in ("cosine", "softmax") for c in args.contexts]
    for attention, context in tqdm(jobs, desc="decode", unit="config"):
        rows.append(measure(attention, context, args))
    print(f"\nper-token decode, GPT preset {args.preset!r}, batch {args.batch}, on {info['device']}, jax {info['jax']}")
    print(f"{'attention':>9} {'context':>8} {'ms/token':>9} {'state MiB':>10} {'step MiB':>9}")
    for r in rows:
        print(f"{r['attention']:>9} {r['context']:>8} {r['ms_per_token']:>9.2f} {r['state_MiB']:>10.2f} "
              f"{r['step_compiled_MiB']:>9.1f}")
    for attention in ("cosine", "softmax"):
        mine = {r["context"]: r["ms_per_token"] for r in rows if r["attention"] == attention}
        lo, hi = min(mine), max(mine)
        print(f"{attention}: latency at {hi} / latency at {lo} = {mine[hi] / mine[lo]:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
