"""The data path's speed and memory: text files -> split -> tokenizer -> ArrayRecord -> Grain batches.

    python benchmarks/data_pipeline.py                       # 100 MB and 1000 MB corpora
    python benchmarks/data_pipeline.py --sizes-mb 100 --profile
    python benchmarks/data_pipeline.py --smoke               # 2 MB and 4 MB, gpt-tiny, 2 steps (the test)

The corpus is synthetic and made here, in a temporary folder removed afterwards (nothing is
committed): one JSONL file, one document a line ({"text": ...}), documents of 1-50 KB (uniform)
of English-like prose: ~4,200 distinct words (the 150 commonest English words, then made-up
words of 1-3 syllables, shorter ones commoner) drawn with a Zipf-Mandelbrot frequency,
separated by spaces, commas and full stops, with capitals after a stop and paragraph breaks.
The corpus at each size begins with the corpus of the smaller sizes (chunks are seeded by
index), so the rows differ only in how much text there is. MB = 10^6 bytes throughout.

Per size, each in a fresh subprocess:

1. Preparation (`prepare.prepare_text`, what `cottention-data prepare` runs): (a) with a given
   4096-token BPE tokenizer (trained once on the first ~20 MB of the corpus, saved as
   tokenizer.json, passed as tokenizer=PATH), (b) with the tokenizer's training included
   (tokenizer="bpe", vocab_size=4096). Seconds, MB/s of text, tokens/s (all tokens written,
   separators included).
2. Peak resident memory of each preparation and of a short gpt-small training run on the data
   prepared in (a) (`train.train_and_evaluate`, 20 steps, which reuses what (a) wrote).
   Peak RSS is the child's VmHWM (/proc/self/status); ru_maxrss of RUSAGE_SELF is recorded
   too, but Linux carries a parent's high-water mark into a child across fork + exec, so it is
   only the child's own when the parent stays small (this script's main process does: it imports
   neither jax nor the library, and generates the corpus in a subprocess too).
3. Batch throughput: `pipeline.gpt_train_batches(prepared, 16, 128)` tokens/s over 2000 batches
   after 50 warm-up batches (median of 3 fresh iterators, seeds 0-2); once, the tokens/s a
   gpt-small training step consumes on this machine (the preset's jitted step, compiled first,
   median of 20 synchronised steps, `benchmarks.measure.median_time`) and the ratio.

Targets (issue 18): peak RSS within 150 MB between the smallest and the largest size and under
1.5 GB; batches >= 20x what a training step consumes and >= 1M tokens/s. `--profile` also runs
preparation (a) of the smallest size under cProfile and records its top costs.
Writes --out (JSON: machine, versions, commit, the rows) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python benchmarks/<name>.py`: import from the root
    sys.path[0] = str(ROOT)

from benchmarks.machine import machine_facts  # noqa: E402  (after the path set-up above)

MB = 1e6
VOCAB = 4096
BATCH, SEQ = 16, 128
TARGET_RSS_SPREAD_MB, TARGET_RSS_PEAK_MB = 150, 1500
TARGET_RATIO, TARGET_BATCH_TOKENS_S = 20, 1e6
_RESULT = "DATA_PIPELINE_RESULT "

# ----------------------------------------------------------------------------- the synthetic corpus

_COMMON = """the of and to a in is that it was for on as with he be at by his this had not are but from or
have an they which one you were her all she there would their we him been has when who will more no if out
so said what up its about into than them can only other new some could time these two may then do first any
my now such like our over man me even most made after also did many before must through back years where much
your way well down should because each just those people how too little state good very make world still own
see men work long get here between both life being under never day same another know while last might us great
old year off come since against go came right used take three""".split()
_ONSETS = (
    "b c d f g h j k l m n p r s t v w y z bl br ch cl cr dr fl fr gl gr pl pr sc sh sk sl sm sn sp st str sw th tr wh"
).split() + [""] * 6
_VOWELS = "a e i o u a e i o ai ea ee oo ou ie oa au".split()
_CODAS = "n r s t l m d nd st ng ck rt th ll ss nt rn ld".split() + [""] * 10
_SUFFIXES = "ing ed er ly tion s es ness ment able".split() + [""] * 14
_MADE_UP = 4000
# separators after a word: space, comma, full stop, full stop + paragraph break (escaped for JSON)
_SEPARATORS = (b" ", b", ", b". ", b".\\n\\n")
_SEPARATOR_P = (0.86, 0.06, 0.065, 0.015)
_CHUNK_BYTES = 8 << 20
_DOC_BYTES = (1_000, 50_000)


def _vocabulary(np):
    """(words, probabilities): common English words first, then made-up ones, shorter commoner."""
    rng = np.random.default_rng(1234)
    made: set[str] = set()
    while len(made) < _MADE_UP:
        syllables = rng.choice([1, 2, 3], p=[0.35, 0.45, 0.2])
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
        word += rng.choice(_SUFFIXES) if syllables < 3 else ""
        if 1 < len(word) <= 14 and word not in _COMMON:
            made.add(word)
    ordered = sorted(made, key=lambda w: (len(w) + rng.normal(0, 1.5), w))
    words = list(dict.fromkeys(_COMMON)) + ordered
    ranks = np.arange(len(words), dtype=np.float64)
    p = 1.0 / (ranks + 2.7) ** 1.05  # Zipf-Mandelbrot
    return words, p / p.sum()


def generate_corpus(path: str, size_mb: float, seed: int = 0) -> dict:
    """Write about size_mb MB of JSONL documents to path (vectorised: a byte gather per 8 MB chunk)."""
    import numpy as np  # noqa: PLC0415

    start = time.perf_counter()
    words, p = _vocabulary(np)
    lower = [w.encode() for w in words]
    table = lower + [w[:1].upper().encode() + w[1:].encode() for w in words] + list(_SEPARATORS)
    lengths = np.array([len(t) for t in table], np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = np.frombuffer(b"".join(table), np.uint8)
    n_words = len(words)
    per_word = float(p @ lengths[:n_words]) + float(np.dot(_SEPARATOR_P, [len(s) for s in _SEPARATORS]))
    target, written, documents, chunk = int(size_mb * MB), 0, 0, 0
    with open(path, "wb") as f:
        while written < target:
            rng = np.random.default_rng([seed, chunk])
            chunk += 1
            n = int(_CHUNK_BYTES / per_word)
            w = rng.choice(n_words, n, p=p)
            s = rng.choice(len(_SEPARATORS), n, p=_SEPARATOR_P)
            capital = np.empty(n, bool)
            capital[0], capital[1:] = True, s[:-1] >= 2
            seq = np.empty(2 * n, np.int64)
            seq[0::2], seq[1::2] = w + capital * n_words, 2 * n_words + s
            size = lengths[seq]
            ends = np.cumsum(size)
            text = flat[np.repeat(starts[seq] - (ends - size), size) + np.arange(ends[-1])]
            # documents end after a sentence's stop (kept) and begin at the next sentence's first word
            stops = np.flatnonzero(s >= 2) * 2 + 1  # token index of each stop separator
            stop_ends = ends[stops]
            cut_lengths = rng.integers(*_DOC_BYTES, size=int(ends[-1] // _DOC_BYTES[0]) + 1)
            wanted = np.cumsum(cut_lengths)
            wanted = wanted[wanted < stop_ends[-1]]
            cuts = np.unique(stops[np.searchsorted(stop_ends, wanted)])
            begin = 0
            for stop in cuts:
                end = int(ends[stop] - size[stop]) + 1  # keep the "."
                line = b'{"text": "' + text[begin:end].tobytes() + b'"}\n'
                f.write(line)
                written += len(line)
                documents += 1
                begin = int(ends[stop])
                if written >= target:
                    break
    return {"bytes": written, "documents": documents, "words": n_words, "seconds": time.perf_counter() - start}


# ----------------------------------------------------------------------------- workers (fresh subprocesses)


def _memory() -> dict:
    """This process's peak resident set: VmHWM (its own, since exec) and ru_maxrss, in MB."""
    import resource  # noqa: PLC0415

    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    return {
        "peak_rss_MB": hwm * 1024 / MB,
        "ru_maxrss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,
    }


def _corpus_texts(path: str, limit: int):
    """The first `limit` characters' worth of documents, as the library's source reads them."""
    from cottention_jax.data.documents import open_source  # noqa: PLC0415

    seen = 0
    for piece in open_source(path).pieces():
        yield piece.text
        seen += len(piece.text)
        if seen >= limit:
            return


def work_tokenizer(corpus: str, out: str, train_mb: float) -> dict:
    from cottention_jax.data import tokenization  # noqa: PLC0415

    start = time.perf_counter()
    tok = tokenization.train_tokenizer("bpe", _corpus_texts(corpus, int(train_mb * MB)), VOCAB)
    tok.save(out)
    return {"seconds": time.perf_counter() - start, "trained_on_MB": train_mb, "vocab_size": tok.vocab_size}


def work_prepare(corpus: str, tokenizer: str, data_dir: str, profile: bool = False) -> dict:
    from cottention_jax.data import prepare  # noqa: PLC0415

    kwargs = dict(
        tokenizer=tokenizer,
        vocab_size=None if tokenizer.endswith(".json") else VOCAB,
        data_dir=data_dir,
        progress=False,
        log=lambda message: None,
    )
    profiler = None
    if profile:
        import cProfile  # noqa: PLC0415

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    prepared = prepare.prepare_text(corpus, **kwargs)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, **_memory()}
    if profiler is not None:
        profiler.disable()
        result["profile_top"] = _top_costs(profiler)
    meta = prepared.meta
    tokens = sum(prepared.num_tokens(s) for s in prepared.splits)
    result.update(
        {
            "folder": str(prepared.folder),
            "text_MB": meta["text_bytes"] / MB,
            "tokens": tokens,
            "documents": sum(prepared.num_documents(s) for s in prepared.splits),
            "MB_per_s": meta["text_bytes"] / MB / seconds,
            "tokens_per_s": tokens / seconds,
            "tokenize_seconds": meta["seconds"],  # the tokenizing pass alone
            "other_seconds": seconds - meta["seconds"],  # the split pass, tokenizer training, fingerprint
            "prepared_MB": sum(f.stat().st_size for f in prepared.folder.iterdir()) / MB,
            "tokenizer_vocab": prepared.tokenizer.vocab_size,
        }
    )
    return result


def _top_costs(profiler, n: int = 12) -> list[dict]:
    import pstats  # noqa: PLC0415

    stats = pstats.Stats(profiler).stats
    rows = [
        {
            "function": f"{Path(file).name}:{line}({name})",
            "calls": nc,
            "tottime_s": round(tt, 3),
            "cumtime_s": round(ct, 3),
        }
        for (file, line, name), (_, nc, tt, ct, _) in stats.items()
    ]
    return sorted(rows, key=lambda r: -r["tottime_s"])[:n]


def work_batches(folder: str, batches: int, warmup: int, repeats: int) -> dict:
    from cottention_jax.data import pipeline, prepare  # noqa: PLC0415

    prepared = prepare.open_prepared(folder)
    rates = []
    for seed in range(repeats):
        it = pipeline.gpt_train_batches(prepared, BATCH, SEQ, seed=seed)
        for _ in range(warmup):
            next(it)
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(it)
        rates.append(batches * batch["inputs"].size / (time.perf_counter() - start))
        it.close()
    return {
        "tokens_per_s": statistics.median(rates),
        "runs_tokens_per_s": rates,
        "batches": batches,
        "warmup": warmup,
        "batch": BATCH,
        "seq_len": SEQ,
        **_memory(),
    }


def work_step(preset: str, repeats: int) -> dict:
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from benchmarks.measure import describe_device, median_time  # noqa: PLC0415
    from cottention_jax.configs import train_preset  # noqa: PLC0415
    from cottention_jax.train import build_model, build_optimizer, make_train_step  # noqa: PLC0415

    cfg = train_preset(preset, [f"model.vocab_size={VOCAB}"])
    b, t = cfg.data.batch_size, cfg.data.seq_len
    model = build_model(cfg)
    optimizer = build_optimizer(model, cfg.optim, cfg.steps)
    ids = jax.random.randint(jax.random.PRNGKey(0), (b, t + 1), 0, VOCAB)
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:], "weights": jnp.ones((b, t))}
    start = time.perf_counter()
    compiled = make_train_step(cfg.kind).lower(model, optimizer, batch).compile()
    compile_s = time.perf_counter() - start
    timing = median_time(compiled, model, optimizer, batch, warmup=2, repeats=repeats, max_seconds=1e9)
    return {
        "preset": preset,
        "batch": b,
        "seq_len": t,
        "compile_s": compile_s,
        "step_s": timing["median_s"],
        "steps_timed": timing["runs"],
        "tokens_per_s": b * t / timing["median_s"],
        "device": describe_device(),
    }


def work_train(corpus: str, tokenizer: str, data_dir: str, workdir: str, preset: str, steps: int) -> dict:
    from cottention_jax.configs import train_preset  # noqa: PLC0415
    from cottention_jax.train import train_and_evaluate  # noqa: PLC0415

    prepared_before = sorted(os.listdir(Path(data_dir) / "prepared"))
    cfg = train_preset(
        preset,
        [
            f"data.corpus={corpus}",
            f"data.tokenizer={tokenizer}",
            f"steps={steps}",
            f"eval_every={steps}",
            "eval_batches=2",
            f"checkpoint_every={steps}",
            "sample_tokens=0",
            f"data.data_dir={data_dir}",
        ],
    )
    start = time.perf_counter()
    summary = train_and_evaluate(cfg, workdir, progress=False)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "steps": steps,
        "preset": preset,
        **_memory(),
        "final_eval_loss": summary["final_eval"].get("loss"),
        "reused_prepared": sorted(os.listdir(Path(data_dir) / "prepared")) == prepared_before,
    }


WORKERS = {
    "generate": generate_corpus,
    "tokenizer": work_tokenizer,
    "prepare": work_prepare,
    "batches": work_batches,
    "step": work_step,
    "train": work_train,
}


def run_worker(name: str, env: dict, **params) -> dict:
    """WORKERS[name](**params) in a fresh `python` process; its result (a dict) read from its stdout."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, json.dumps(params)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {name} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len(_RESULT) :])


# ----------------------------------------------------------------------------- the run


def _spread(rows: list[dict], key: str) -> dict:
    values = [r[key]["peak_rss_MB"] for r in rows]
    spread = values[-1] - values[0]
    return {
        "smallest_MB": values[0],
        "largest_MB": values[-1],
        "largest_minus_smallest_MB": spread,
        "peak_MB": max(values),
        "meets_target": abs(spread) <= TARGET_RSS_SPREAD_MB and max(values) <= TARGET_RSS_PEAK_MB,
    }


def table(result: dict) -> str:
    """The README's table (markdown)."""
    lines = [
        "| corpus | prepare, given tokenizer | prepare, training the tokenizer | peak RSS prepare "
        "(given / training) | peak RSS training run | batches (16 x 128) |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        a, b = r["prepare_given"], r["prepare_training"]
        lines.append(
            f"| {r['size_MB']:,.0f} MB ({r['prepare_given']['tokens'] / 1e6:,.0f}M tokens) "
            f"| {a['MB_per_s']:.1f} MB/s ({a['seconds']:.0f} s, {a['tokens_per_s'] / 1e6:.2f}M tokens/s) "
            f"| {b['MB_per_s']:.1f} MB/s ({b['seconds']:.0f} s, {b['tokens_per_s'] / 1e6:.2f}M tokens/s) "
            f"| {a['peak_rss_MB']:,.0f} / {b['peak_rss_MB']:,.0f} MB | {r['train']['peak_rss_MB']:,.0f} MB "
            f"| {r['batches']['tokens_per_s'] / 1e6:.2f}M tokens/s |"
        )
    s = result["summary"]
    lines += [
        "",
        "Peak RSS, largest minus smallest corpus: prepare "
        f"{s['rss_prepare_given']['largest_minus_smallest_MB']:+.0f} MB (given tokenizer), "
        f"{s['rss_prepare_training']['largest_minus_smallest_MB']:+.0f} MB (training it), "
        f"training run {s['rss_train']['largest_minus_smallest_MB']:+.0f} MB (target within "
        f"{TARGET_RSS_SPREAD_MB} MB, peak under {TARGET_RSS_PEAK_MB / 1000:.1f} GB).",
        f"Batch throughput: `gpt_train_batches(prepared, {BATCH}, {SEQ})` gives "
        f"{s['batch_tokens_per_s'] / 1e6:.2f}M tokens/s; a {result['step']['preset']} training step consumes "
        f"{result['step']['tokens_per_s']:,.0f} tokens/s on this CPU ({result['step']['step_s'] * 1e3:.0f} ms "
        f"per {result['step']['batch']} x {result['step']['seq_len']} batch): {s['batches_over_step']:,.0f}x "
        f"(target >= {TARGET_RATIO}x and "
        f">= {TARGET_BATCH_TOKENS_S / 1e6:.0f}M tokens/s).",
    ]
    return "\n".join(lines)


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[100, 1000])
    p.add_argument("--smoke", action="store_true", help="2 MB and 4 MB, tiny steps: checks the script (~1 min)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data_pipeline.json")
    p.add_argument("--preset", help="the training preset (default gpt-small; gpt-tiny with --smoke)")
    p.add_argument("--profile", action="store_true", help="also profile preparation (a) of the smallest size")
    p.add_argument("--tmp", help="where the temporary folder goes (default: the system's)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--note", default="", help="added to the results' note")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("params", nargs="?", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](**json.loads(args.params))
        print(_RESULT + json.dumps(result), flush=True)
        return
    sizes = sorted([2, 4] if args.smoke else args.sizes_mb)
    args.preset = args.preset or ("gpt-tiny" if args.smoke else "gpt-small")
    tok_train_mb = min(20.0, sizes[0] / 2)
    n_batches, warmup, step_repeats, train_steps = (200, 10, 3, 2) if args.smoke else (2000, 50, 20, 20)
    root = Path(tempfile.mkdtemp(prefix="cottention-data-bench-", dir=args.tmp))
    env = {**os.environ, "COTTENTION_DATA_DIR": str(root / "cache"), "PYTHONPATH": str(ROOT)}
    loads = [os.getloadavg()]
    rows, started = [], time.perf_counter()

    def say(message):
        print(f"[{time.perf_counter() - started:7.1f} s] {message}", flush=True)

    try:
        tokenizer = str(root / "tokenizer.json")
        for i, size in enumerate(sizes):
            folder = root / f"{size:g}MB"
            folder.mkdir()
            corpus = str(folder / "corpus.jsonl")
            gen = run_worker("generate", env, path=corpus, size_mb=size)
            say(
                f"{size:g} MB: generated {gen['bytes'] / MB:,.1f} MB, {gen['documents']:,} documents "
                f"in {gen['seconds']:.1f} s"
            )
            if i == 0:
                tok = run_worker("tokenizer", env, corpus=corpus, out=tokenizer, train_mb=tok_train_mb)
                say(f"tokenizer: BPE {tok['vocab_size']} trained on {tok_train_mb:g} MB in {tok['seconds']:.1f} s")
            row = {"size_MB": size, "corpus": gen}
            row["prepare_given"] = run_worker(
                "prepare", env, corpus=corpus, tokenizer=tokenizer, data_dir=str(folder / "given")
            )
            say(
                f"{size:g} MB: prepare (given tokenizer) {row['prepare_given']['MB_per_s']:.1f} MB/s, "
                f"peak RSS {row['prepare_given']['peak_rss_MB']:,.0f} MB"
            )
            row["prepare_training"] = run_worker(
                "prepare", env, corpus=corpus, tokenizer="bpe", data_dir=str(folder / "trained")
            )
            say(
                f"{size:g} MB: prepare (training the tokenizer) {row['prepare_training']['MB_per_s']:.1f} MB/s, "
                f"peak RSS {row['prepare_training']['peak_rss_MB']:,.0f} MB"
            )
            row["batches"] = run_worker(
                "batches", env, folder=row["prepare_given"]["folder"], batches=n_batches, warmup=warmup, repeats=3
            )
            say(f"{size:g} MB: batches {row['batches']['tokens_per_s'] / 1e6:.2f}M tokens/s")
            row["train"] = run_worker(
                "train",
                env,
                corpus=corpus,
                tokenizer=tokenizer,
                data_dir=str(folder / "given"),
                workdir=str(folder / "run"),
                preset=args.preset,
                steps=train_steps,
            )
            say(f"{size:g} MB: training run ({train_steps} steps) peak RSS {row['train']['peak_rss_MB']:,.0f} MB")
            if args.profile and i == 0:
                prof = run_worker(
                    "prepare", env, corpus=corpus, tokenizer=tokenizer, data_dir=str(folder / "profiled"), profile=True
                )
                row["profile"] = {"seconds_under_cprofile": prof["seconds"], "top_by_tottime": prof["profile_top"]}
                say(f"{size:g} MB: profiled")
            rows.append(row)
            if not args.keep:
                shutil.rmtree(folder)
        step = run_worker("step", env, preset=args.preset, repeats=step_repeats)
        say(f"{args.preset} train step: {step['tokens_per_s']:,.0f} tokens/s")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    loads.append(os.getloadavg())
    batch_rate = min(r["batches"]["tokens_per_s"] for r in rows)
    summary = {
        "rss_prepare_given": _spread(rows, "prepare_given"),
        "rss_prepare_training": _spread(rows, "prepare_training"),
        "rss_train": _spread(rows, "train"),
        "batch_tokens_per_s": batch_rate,
        "step_tokens_per_s": step["tokens_per_s"],
        "batches_over_step": batch_rate / step["tokens_per_s"],
        "batches_meet_target": batch_rate / step["tokens_per_s"] >= TARGET_RATIO
        and batch_rate >= TARGET_BATCH_TOKENS_S,
    }
    result = {
        "benchmark": "data_pipeline",
        "smoke": args.smoke,
        "machine": machine_facts("jax", "jaxlib", "grain", "array-record", "tokenizers", "numpy"),
        "note": " ".join(
            filter(
                None,
                [
                    "Corpus: synthetic JSONL (see the script's docstring); MB = 1e6 bytes; peak RSS = the "
                    "subprocess's VmHWM. batch_tokens_per_s in the summary is the lowest over sizes.",
                    f"Load average (1, 5, 15 min) at start {loads[0]}, at end {loads[1]}.",
                    args.note,
                ],
            )
        ),
        "settings": {
            "sizes_MB": sizes,
            "vocab_size": VOCAB,
            "tokenizer_trained_on_MB": tok_train_mb,
            "batch": BATCH,
            "seq_len": SEQ,
            "batches_timed": n_batches,
            "warmup_batches": warmup,
            "train_steps": train_steps,
            "step_repeats": step_repeats,
            "preset": args.preset,
        },
        "rows": rows,
        "step": step,
        "summary": summary,
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))


if __name__ == "__main__":
    main(sys.argv[1:])
