"""Per-token decode latency and decode-state memory: cosine (RNN state) vs softmax (KV cache).

    python benchmarks/decode_benchmark.py [--preset small] [--contexts 1024 8192 32768]
    python benchmarks/decode_benchmark.py --preset gptj-300m --dtype bfloat16          # on a GPU

For each context length C the model prefills a random prompt of C tokens in one
call (`decoding.prefill`: cosine's chunked scan with return_state, softmax's
flash attention over the prompt writing the KV cache). --prefill-chunk N feeds
it in N-token pieces through the decode step instead; by default that is done
(2,048 tokens) only where softmax has no flash path (XLA's dense scores, e.g.
on a CPU), whose T x T scores would not fit. Then a jitted
`lax.scan` of --steps single-token greedy steps (`decoding.make_decode_loop`) is
timed: the median of --repeats calls after a warm-up, divided by --steps.
Memory: the decode state and XLA's compiled memory of the loop. "prefill s" is
one warm call (chunked: the whole loop, its first compilation included). Writes
results.json to --out.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: import `benchmarks` from the root
    sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])

import jax
from flax import nnx
from tqdm import tqdm

from benchmarks.measure import describe_device, median_time
from cottention_jax import decoding, softmax_ops
from cottention_jax.memory import compiled_memory_bytes
from cottention_jax.models import GPT, gpt_config


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--contexts", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--attention", nargs="+", default=["cosine", "softmax"])
    p.add_argument("--dtype", default="float32", help="compute dtype (bfloat16 on a GPU)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=64, help="decode steps per timed call")
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=None,
        help="0: one prefill call; N: N-token pieces (default: one call where a flash path exists)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/decode_benchmark"))
    return p.parse_args()


def prefill(model, prompt, max_length, chunk):
    """Last logits (B, V) after the prompt, in one call (timed on a second, warm call) or in chunks."""
    if not chunk:
        jax.block_until_ready(decoding.prefill(model, prompt, max_length=max_length))  # compile
        start = time.perf_counter()
        logits = jax.block_until_ready(decoding.prefill(model, prompt, max_length=max_length))
        return logits, time.perf_counter() - start
    model.init_cache(prompt.shape[0], max_length)
    step, cache = decoding.make_decode_step(model)
    start = time.perf_counter()
    for begin in range(0, prompt.shape[1], chunk):
        logits, cache = step(cache, prompt[:, begin : begin + chunk])
    nnx.update(model, jax.block_until_ready(cache))
    return logits, time.perf_counter() - start


def measure(attention, context, args):
    cfg = gpt_config(args.preset, attention=attention, max_len=context + args.steps, dtype=args.dtype)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    model.eval()
    prompt = jax.random.randint(jax.random.PRNGKey(context), (args.batch, context), 0, cfg.vocab_size)
    chunk = args.prefill_chunk
    if chunk is None:  # softmax without a flash path here: its one-call prefill is quadratic
        dense = attention == "softmax" and softmax_ops.default_implementation(cfg.dtype, cfg.head_dim) == "xla"
        chunk = 2048 if dense else 0
    logits, prefill_s = prefill(model, prompt, context + args.steps, chunk)
    loop, cache = decoding.make_decode_loop(model, args.steps)
    key = jax.random.PRNGKey(1)
    timing = median_time(loop, cache, logits, key, warmup=1, repeats=args.repeats)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
    return {
        "attention": attention,
        "context": context,
        "ms_per_token": 1e3 * timing["median_s"] / args.steps,
        "prefill_s": prefill_s,
        "prefill": f"{chunk}-token chunks" if chunk else "one call",
        "state_MiB": state_bytes / 2**20,
        "loop_compiled_MiB": compiled_memory_bytes(loop, cache, logits, key) / 2**20,
        "runs": timing["runs"],
    }


def main():
    args = parse_args()
    info = {**describe_device(), "preset": args.preset, "batch": args.batch, "dtype": args.dtype, "steps": args.steps}
    rows = []
    jobs = [(a, c) for a in args.attention for c in args.contexts]
    for attention, context in tqdm(jobs, desc="decode", unit="row"):
        start = time.perf_counter()
        rows.append({**measure(attention, context, args), "row_s": time.perf_counter() - start})
    print(
        f"\nper-token decode, GPT preset {args.preset!r} ({args.dtype}), batch {args.batch}, on {info['device']}, "
        f"jax {info['jax']}; median of {args.repeats} scans of {args.steps} steps"
    )
    print(
        f"{'attention':>9} {'context':>8} {'ms/token':>9} {'prefill s':>10} {'prefill':>18} {'state MiB':>10} "
        f"{'loop MiB':>9} {'row s':>6}"
    )
    for r in rows:
        print(
            f"{r['attention']:>9} {r['context']:>8} {r['ms_per_token']:>9.3f} {r['prefill_s']:>10.3f} "
            f"{r['prefill']:>18} {r['state_MiB']:>10.2f} {r['loop_compiled_MiB']:>9.1f} {r['row_s']:>6.1f}"
        )
    for attention in args.attention:
        mine = {r["context"]: r["ms_per_token"] for r in rows if r["attention"] == attention}
        lo, hi = min(mine), max(mine)
        print(f"{attention}: latency at {hi} / latency at {lo} = {mine[hi] / mine[lo]:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
