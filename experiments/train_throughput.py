"""Training-step throughput (tokens/s) of the GPT with cosine vs softmax attention at several lengths.

    python experiments/train_throughput.py [--preset gpt-small] [--seq-lens 512 2048] [--tokens 8192]

Each step sees --tokens tokens (batch = tokens / seq_len), random token ids; the
time is the median of synchronised optimizer steps after warm-up. Writes results.json to --out.
"""

import argparse
import json
import pathlib
import sys

import jax
import jax.numpy as jnp

from cottention_jax.benchmark import describe_device, median_time
from cottention_jax.configs import train_preset
from cottention_jax.train import build_model, build_optimizer, make_train_step


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="gpt-small")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--tokens", type=int, default=8192, help="tokens per optimizer step")
    p.add_argument("--attention", nargs="+", default=["cosine", "softmax"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/train_throughput"))
    args = p.parse_args(argv)
    info = describe_device()
    rows = []
    for seq in args.seq_lens:
        for attention in args.attention:
            cfg = train_preset(args.preset, [f"model.attention={attention}", f"model.max_len={seq}"])
            model = build_model(cfg)
            optimizer = build_optimizer(model, cfg.optim, cfg.steps)
            step = make_train_step(cfg.kind)
            batch_size = max(args.tokens // seq, 1)
            ids = jax.random.randint(jax.random.PRNGKey(seq), (batch_size, seq + 1), 0, cfg.model.vocab_size)
            batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": jnp.ones((batch_size, seq))}
            timing = median_time(step, model, optimizer, batch, warmup=2, repeats=args.repeats)
            rows.append({"attention": attention, "seq": seq, "batch": batch_size,
                         "tokens_per_second": batch_size * seq / timing["median_s"],
                         "ms_per_step": 1e3 * timing["median_s"]})
            print(f"{attention:>8} seq {seq:>5} batch {batch_size:>3}: {rows[-1]['tokens_per_second']:>9,.0f} tokens/s "
                  f"({rows[-1]['ms_per_step']:.0f} ms/step)", flush=True)
    print(f"GPT preset {args.preset!r} training steps on {info['device']} ({info['cpu_cores']} cores), jax {info['jax']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
