"""Command-line front ends: `cottention-train` (and the experiment scripts), `cottention-generate`.

    cottention-train --preset gpt-small --workdir runs/gpt --set steps=500
    cottention-generate --workdir runs/gpt --prompt "ROMEO:" --temperature 0.8 --top-k 40

Training needs the [train] extra (`pip install "cottention-jax[train]"`); generation does not.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from cottention_jax.cli_errors import OneLineParser, add_debug_flag, is_user_error, joined, one_line
from cottention_jax.configs import TRAIN_PRESETS, TrainConfig, apply_overrides, finetune_config, to_dict, train_preset

__all__ = ["generate_main", "train_cli", "train_main"]

_TRAIN_EXTRA = 'pip install "cottention-jax[train]"'
_TRAIN_MODULES = ("tensorflow_datasets", "array_record", "grain", "tqdm", "tensorboardX", "matplotlib")  # that extra


def _parser(description: str, default_preset: str, kinds: tuple[str, ...], finetune: bool):
    presets = sorted(n for n, c in TRAIN_PRESETS.items() if c.kind in kinds)
    p = OneLineParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Examples of --set: model.attention=softmax steps=500 "
        "optim.learning_rate=3e-4 data.corpus=mixed sharding=data "
        "model.dtype=bfloat16 optim.accumulate_steps=4",
    )
    p.add_argument("--preset", default=default_preset, choices=presets, help="named configuration")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field (repeatable)",
    )
    p.add_argument(
        "--workdir",
        default=None,
        help="checkpoints, metrics and plots (default runs/<preset>); an existing workdir resumes",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_debug_flag(p)
    multi = p.add_argument_group(
        "several processes (run the same command in each; cottention-launch does it "
        "on one machine; SLURM / Open MPI are detected)"
    )
    multi.add_argument(
        "--coordinator", help="HOST:PORT of process 0's coordination service (or $COTTENTION_COORDINATOR)"
    )
    multi.add_argument("--num-processes", type=int, help="how many processes (or $COTTENTION_NUM_PROCESSES)")
    multi.add_argument("--process-id", type=int, help="this process's index (or $COTTENTION_PROCESS_ID)")
    multi.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=60,
        metavar="SECONDS",
        help="a peer silent this long counts as dead and the others stop (default 60)",
    )
    if finetune:
        p.add_argument(
            "--finetune",
            action="store_true",
            help="classification finetuning of the pretrained encoder instead of MLM pretraining",
        )
        p.add_argument(
            "--task",
            default="sentiment",
            help="sentiment | paraphrase | tfds:glue/NAME (e.g. tfds:glue/mrpc) | PATH.csv / .jsonl | "
            "a folder with train.* and validation.* | glue: the 8 tasks of the paper's table",
        )
        p.add_argument("--init-from", default=None, help="pretraining workdir to start from (default: runs/<preset>)")
    return p


def train_cli(
    argv: Sequence[str] | None, *, description: str, default_preset: str, kinds: tuple[str, ...], finetune: bool = False
) -> dict | None:
    """Parse argv, resolve the config and run `train_and_evaluate`; returns its summary."""
    parser = _parser(description, default_preset, kinds, finetune)
    args = parser.parse_args(argv)
    config = train_preset(args.preset)
    workdir = args.workdir or f"runs/{args.preset}"
    try:  # a config value that fails validation: one line, exit status 1
        if finetune and args.finetune:
            init_from = args.init_from or f"runs/{args.preset}"
            if args.task == "glue":
                apply_overrides(config, args.overrides)  # checked before any run starts
                return _run_glue(args, config, init_from)
            config = finetune_config(config, args.task, init_from)
            workdir = args.workdir or f"runs/{args.preset}-{_task_slug(args.task)}"
        config = apply_overrides(config, args.overrides)
    except Exception as err:
        if args.debug or not is_user_error(err):
            raise
        raise SystemExit(f"{parser.prog}: error: {joined(err)}") from None
    if args.print_config:
        print(json.dumps(to_dict(config), indent=1))
        return None
    _require_train_extra()
    multi = _join_processes(args)
    from cottention_jax.preemption import RunInterrupted  # noqa: PLC0415
    from cottention_jax.train import train_and_evaluate  # noqa: PLC0415  (jax start-up after --help)

    try:
        summary = train_and_evaluate(config, workdir, progress=not args.no_progress)
    except RunInterrupted as stop:  # SIGTERM / SIGINT: saved, one line, 143 / 130
        _leave(stop.exit_status, _one_line(stop), multi)
    except BaseException as err:
        if is_user_error(err) and not args.debug:  # what the user acts on is the message, not the traceback
            _leave(1, _one_line(err), multi)
        if not multi:  # an internal error (or --debug) keeps its traceback
            raise
        if _lost_a_peer(err) and not args.debug:  # another process died: its own log says why
            _leave(
                1,
                f"lost another process of the run ({_one_line(err)[:300]}); rerun the command on every "
                "process to resume from the last intact checkpoint",
                multi,
            )
        traceback.print_exc()
        _leave(1, "", multi)
    if multi:
        from cottention_jax import distributed  # noqa: PLC0415

        distributed.barrier("cottention-train-end", timeout_s=600)  # no process exits while another still writes
        if not distributed.is_primary():
            return summary
    print(json.dumps({k: v for k, v in summary.items() if k != "sample"}, indent=1))
    if "sample" in summary:
        print("\n--- generated sample (RNN decoding) ---\n" + summary["sample"])
    return summary


def _join_processes(args) -> bool:
    """Join a multi-process run (jax.distributed) when flags, `COTTENTION_*` variables or a cluster say so;
    before anything starts a JAX backend. False for a single process (nothing changes)."""
    from cottention_jax import distributed  # noqa: PLC0415

    try:
        cfg = distributed.config_from_env(
            distributed.DistributedConfig(
                coordinator=args.coordinator,
                num_processes=args.num_processes,
                process_id=args.process_id,
                heartbeat_timeout_s=args.heartbeat_timeout,
            )
        )
        return distributed.initialize(cfg)
    except (ValueError, RuntimeError) as err:
        raise SystemExit(_one_line(err)) from None


def _lost_a_peer(err: BaseException) -> bool:
    """Whether a collective failed because a peer process went away (gloo / NCCL connection errors)."""
    text = str(err)
    return any(
        sign in text
        for sign in (
            "Connection reset by peer",
            "Connection closed by peer",
            "Broken pipe",
            "heartbeat timeout",
            "unhealthy",
        )
    )


def _leave(status: int, message: str, multi: bool) -> None:
    """Exit with `status` after one line on stderr. A process of a multi-process run leaves at once
    (os._exit): waiting in JAX's shutdown barrier for peers that stopped too would end in an abort."""
    if not multi:
        if status == 1:
            raise SystemExit(message)
        print(message, file=sys.stderr)
        raise SystemExit(status)
    from cottention_jax import distributed  # noqa: PLC0415

    if message:
        print(distributed.process_prefix() + message, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _one_line(err: BaseException, prog: str | None = None) -> str:
    """`<command>: <ErrorType>: <message>` on one line."""
    return one_line(err, prog or Path(sys.argv[0]).name)


def _task_slug(task: str) -> str:
    """A workdir-friendly name of a task spec: "tfds:glue/mrpc" -> "glue-mrpc", "data/x.csv" -> "x"."""
    name = task.removeprefix("tfds:") if task.startswith("tfds:") else Path(task).name.split(".")[0] or "task"
    return name.replace("/", "-")


def _run_glue(args, pretrain: TrainConfig, init_from: str) -> dict:
    """--task glue: finetune on each task of the paper's GLUE table from one pretraining workdir, print the table."""
    _require_train_extra()
    from cottention_jax.glue import run_glue  # noqa: PLC0415

    try:
        return run_glue(
            init_from,
            pretrain,
            workdir_root=args.workdir or f"runs/{args.preset}-glue",
            overrides=args.overrides,
            progress=not args.no_progress,
        )
    except Exception as err:
        if args.debug or not is_user_error(err):
            raise
        raise SystemExit(_one_line(err)) from None


def _require_train_extra() -> None:
    missing = [name for name in _TRAIN_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(f"training needs the [train] extra ({', '.join(missing)} not installed): {_TRAIN_EXTRA}")


def train_main(argv: Sequence[str] | None = None) -> None:
    """`cottention-train`: every training preset (GPT, BERT pretraining, --finetune for BERT)."""
    train_cli(
        sys.argv[1:] if argv is None else argv,
        description="Train a cosine- or softmax-attention GPT or BERT on the offline corpora.\n\n"
        "  cottention-train --preset gpt-small --workdir runs/gpt\n"
        "  cottention-train --preset bert-small --finetune --task sentiment",
        default_preset="gpt-small",
        kinds=("gpt", "bert-mlm"),
        finetune=True,
    )


def _generate_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="cottention-generate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Continue prompts with a trained GPT (its workdir): a prefill of the prompt, then RNN "
        "decoding (cosine attention) or a KV cache (softmax).",
        epilog="Greedy by default; --temperature > 0 samples (with --top-k / --top-p). Generation stops at the "
        "tokenizer's end-of-sequence token unless --no-stop.",
    )
    p.add_argument("--workdir", required=True, help="the training run's workdir (cottention-train --workdir)")
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=0, help="PRNG seed of the sampling")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument(
        "--eos-token-id",
        type=int,
        default=None,
        help="stop at this token (default: the tokenizer's end-of-sequence token)",
    )
    stop.add_argument("--no-stop", action="store_true", help="always generate --max-new-tokens tokens")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest intact one)")
    p.add_argument("--json", action="store_true", help="one JSON object per prompt: prompt, completion, tokens")
    add_debug_flag(p)
    return p


def generate_main(argv: Sequence[str] | None = None) -> None:
    """`cottention-generate`: print each prompt followed by its completion (or, --json, one JSON line each).
    A user's mistake (no such workdir or step, a damaged checkpoint or tokenizer, a bad flag value) ends in
    one line on stderr and exit status 1 (2 for a malformed command line); --debug shows the traceback."""
    parser = _generate_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        _generate(args, parser)
    except KeyboardInterrupt:  # Ctrl-C: nothing to save, no traceback
        if args.debug:
            raise
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if args.debug or not is_user_error(err):
            raise
        raise SystemExit(_one_line(err, parser.prog)) from None


def _generate(args, parser: argparse.ArgumentParser) -> None:
    import jax  # noqa: PLC0415  (jax start-up after --help)
    import jax.numpy as jnp  # noqa: PLC0415

    from cottention_jax import decoding, inference  # noqa: PLC0415

    config = inference.load_run_config(args.workdir, step=args.step)
    if config.kind != "gpt":
        parser.error(f"--workdir holds a {config.kind!r} run; generation needs a GPT (kind 'gpt')")
    tokenizer = inference.load_tokenizer(args.workdir, step=args.step)
    model = inference.load_model(args.workdir, step=args.step)
    eos = None if args.no_stop else (tokenizer.eos_id if args.eos_token_id is None else args.eos_token_id)
    encoded = [tokenizer.encode(text) for text in args.prompt]
    if not all(encoded):
        parser.error("--prompt must not be empty (it has no tokens to continue)")
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_id or 0
    prompt = jnp.asarray([[pad] * (width - len(ids)) + ids for ids in encoded], jnp.int32)  # left-padded
    mask = jnp.asarray([[False] * (width - len(ids)) + [True] * len(ids) for ids in encoded])
    tokens = decoding.generate(
        model,
        prompt,
        prompt_mask=mask,
        max_new_tokens=args.max_new_tokens,
        key=jax.random.PRNGKey(args.seed),
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_token_id=eos,
    )
    for text, row in zip(args.prompt, tokens.tolist(), strict=True):
        ids = row[: row.index(eos)] if eos is not None and eos in row else row
        completion = tokenizer.decode(ids)
        print(json.dumps({"prompt": text, "completion": completion, "tokens": ids}) if args.json else text + completion)
