"""Training end to end on the embedded Shakespeare corpus, with tiny configs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cottention_jax.checkpoint import Checkpointer
from cottention_jax.cli import train_cli
from cottention_jax.configs import apply_overrides, from_dict, to_dict, train_preset
from cottention_jax.metrics import read_metrics
from cottention_jax.train import (
    RunState,
    TrainingDivergedError,
    _check_resumable,
    build_model,
    build_optimizer,
    hook,
    learning_rate_schedule,
    prepare_data,
    setup_run,
    train_and_evaluate,
)
from cottention_jax.workdir_lock import LOCK_FILE, WorkdirLockedError
from tests._util import REPO_ROOT, fresh_key

REPO = REPO_ROOT


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One data directory for the module: the tiny datasets are built once."""
    return str(tmp_path_factory.mktemp("data"))


def _config(preset, data_dir, *overrides):
    return apply_overrides(train_preset(preset), [f"data.data_dir={data_dir}", *overrides])


@pytest.mark.parametrize("attention", ["cosine", "softmax"])
@pytest.mark.parametrize("preset", ["gpt-tiny", "bert-tiny"])
def test_a_few_steps_lower_the_loss_on_real_text(preset, attention, data_dir, tmp_path):
    cfg = _config(
        preset,
        data_dir,
        f"model.attention={attention}",
        "steps=25",
        "eval_every=25",
        "checkpoint_every=25",
        "sample_tokens=8",
    )
    summary = train_and_evaluate(cfg, tmp_path, progress=False)
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 25
    assert evals[-1]["loss"] < evals[0]["loss"] - 0.5, evals
    assert (tmp_path / "training.png").stat().st_size > 10_000
    assert list((tmp_path / "tensorboard").iterdir())
    if attention == "cosine":
        stab = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "stabilizer"]
        assert len(stab) == 2 and {"layer0", "layer1"} <= set(stab[-1])
        assert len(summary["stabilizer_mean_per_layer"]) == 2
    if preset == "gpt-tiny":
        assert summary["sample"].startswith(cfg.sample_prompt) and len(summary["sample"]) > len(cfg.sample_prompt)


def test_a_user_hook_runs_at_its_interval_and_after_the_last_step(data_dir, tmp_path):
    cfg = _config(
        "gpt-tiny", data_dir, "steps=7", "eval_every=1000", "log_every=2", "checkpoint_every=1000", "sample_tokens=0"
    )
    seen = []

    @hook(every=3)
    def record(run, step):
        assert isinstance(run, RunState) and run.step == step
        seen.append((step, len(run.history), len(run.window)))

    class Counter:  # any callable with an `every` is a hook
        every, calls = 5, []

        def __call__(self, run, step):
            self.calls.append(step)
            run.writer.write(step, "user", value=float(step))

    counter = Counter()
    summary = train_and_evaluate(cfg, tmp_path, progress=False, hooks=[record, counter])
    # steps 3, 6 and the last; the run's own hooks ran first (train log at even steps and the last,
    # which empties the window)
    assert seen == [(3, 3, 1), (6, 6, 0), (7, 7, 0)]
    assert counter.calls == [5, 7]
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records if r["split"] == "user"] == [5, 7]
    assert [r["step"] for r in records if r["split"] == "train"] == [2, 4, 6, 7]  # the format of before
    assert [r["step"] for r in records if r["split"] == "eval"] == [0, 7]
    assert summary["final_eval"]["count"] > 0
    with pytest.raises(ValueError, match="every must be an int >= 1"):
        hook(lambda run, step: None, every=0)
    with pytest.raises(TypeError, match="hooks must be Hook objects"):
        train_and_evaluate(cfg, tmp_path / "other", progress=False, hooks=[lambda run, step: None])


def test_learning_rate_schedule_warms_up_and_decays():
    cfg = train_preset("gpt-tiny", ["optim.warmup_steps=10", "optim.learning_rate=1e-3", "optim.end_lr_ratio=0.1"])
    lr = learning_rate_schedule(cfg.optim, 100)
    assert float(lr(0)) == 0.0 and abs(float(lr(10)) - 1e-3) < 1e-9
    assert abs(float(lr(99)) - 1e-4) < 2e-6 and float(lr(50)) < float(lr(20))


def test_checkpoint_round_trip(data_dir, tmp_path):
    cfg = _config("gpt-tiny", data_dir, "model.dropout_rate=0.1")
    data = prepare_data(cfg)
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.optim, cfg.steps)
    grads = jax.tree.map(jnp.ones_like, nnx.state(model, nnx.Param))
    opt.update(model, grads)  # a non-trivial optimizer state
    next(data.train), next(data.train)
    ckpt = Checkpointer(tmp_path, save_every=1, keep=2)
    ckpt.save(7, model, opt, data.train.get_state(), to_dict(cfg))
    ckpt.wait()

    fresh, fresh_data = build_model(cfg, seed=123), prepare_data(cfg)
    fresh_opt = build_optimizer(fresh, cfg.optim, cfg.steps)
    step, data_state, saved_cfg = ckpt.restore(fresh, fresh_opt)
    ckpt.close()
    assert step == 7 and from_dict(saved_cfg) == cfg
    fresh_data.train.set_state(data_state)
    for a, b in zip(
        jax.tree.leaves(nnx.state((model, opt))), jax.tree.leaves(nnx.state((fresh, fresh_opt))), strict=True
    ):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(next(fresh_data.train)["inputs"], next(data.train)["inputs"])


def _train_cmd(workdir, data_dir, steps):
    return [
        sys.executable,
        str(REPO / "experiments" / "train_gpt.py"),
        "--preset",
        "gpt-tiny",
        "--no-progress",
        "--workdir",
        str(workdir),
        "--set",
        f"data.data_dir={data_dir}",
        "--set",
        f"steps={steps}",
        "--set",
        "log_every=1",
        "--set",
        "checkpoint_every=10",
        "--set",
        "eval_every=1000",
        "--set",
        "sample_tokens=0",
        "--set",
        "model.dropout_rate=0.1",
    ]


def _complete_checkpoints(workdir):
    root = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


SIGNAL_STEPS = 60  # the interrupted runs below: long enough that a signal or SIGKILL lands mid-run


def _train_losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(Path(workdir) / "metrics.jsonl") if r["split"] == "train"}


@pytest.fixture(scope="module")
def clean_losses(data_dir, tmp_path_factory):
    """The uninterrupted run's train losses, trained once for the module: the SIGKILL and signal tests
    all compare their resumed runs to the same command (same config, data and seed), so one clean run
    serves them all (it would be bit for bit the same each time)."""
    cache: dict[int, dict[int, float]] = {}

    def losses(steps: int, env) -> dict[int, float]:
        if steps not in cache:
            clean = tmp_path_factory.mktemp("clean")
            subprocess.run(_train_cmd(clean, data_dir, steps), env=env, check=True, capture_output=True)
            cache[steps] = _train_losses(clean)
        return cache[steps]

    return losses


def _assert_rerun_continues_exactly(interrupted, clean_losses, data_dir, steps: int, resumed_from: int, env) -> None:
    """Rerun the interrupted workdir to the end, and compare with the uninterrupted run (`clean_losses`):
    every step is logged once and the losses after `resumed_from` are the same, bit for bit."""
    subprocess.run(_train_cmd(interrupted, data_dir, steps), env=env, check=True, capture_output=True)
    losses = [_train_losses(interrupted), clean_losses(steps, env)]
    assert sorted(losses[0]) == list(range(1, steps + 1))
    assert sorted(losses[1]) == list(range(1, steps + 1))
    after = range(resumed_from + 1, steps + 1)
    assert [losses[0][s] for s in after] == [losses[1][s] for s in after]


def test_sigkill_then_resume_gives_the_same_losses(data_dir, clean_losses, tmp_path):
    steps = SIGNAL_STEPS  # killed once checkpoint 20 is complete: 40 steps still to go
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _train_cmd(killed, data_dir, steps),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(s >= 20 for s in _complete_checkpoints(killed)):
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be killed mid-run"
    assert not (killed / "summary.json").exists()
    resumed_from = max(_complete_checkpoints(killed))

    _assert_rerun_continues_exactly(killed, clean_losses, data_dir, steps, resumed_from, env)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_between_checkpoints_saves_that_step_and_the_rerun_continues_exactly(
    signum, data_dir, clean_losses, tmp_path
):
    """SIGTERM (a preemption notice) or SIGINT at a step between checkpoints: the run saves that step,
    releases the lock and exits 128 + signum with one line; the rerun's losses equal an uninterrupted run's."""
    steps = SIGNAL_STEPS
    stopped = tmp_path / "stopped"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        _train_cmd(stopped, data_dir, steps), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        records = read_metrics(stopped / "metrics.jsonl")
        if any(r["split"] == "train" and r["step"] >= 12 for r in records):
            proc.send_signal(signum)
            break
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    (line,) = err.strip().splitlines()[-1:]
    interrupted = int(line.split("after step ")[1].split(":")[0])
    assert f"stopped by {signal.Signals(signum).name} after step {interrupted}" in line
    assert interrupted >= 12 and interrupted in _complete_checkpoints(stopped)
    assert not (stopped / LOCK_FILE).exists() and not (stopped / "summary.json").exists()

    _assert_rerun_continues_exactly(stopped, clean_losses, data_dir, steps, interrupted, env)


def test_sharded_training_step_equals_single_device(data_dir):
    """data / fsdp on 8 devices and a 2 x 4 data x sequence mesh: the single-device losses, gradients and
    parameters; the sequence-parallel attention exchanges only d x d states."""
    prepare_data(_config("gpt-tiny", data_dir))  # build the dataset here, not in 8-device land
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    run = subprocess.run(
        [sys.executable, "-m", "tests._sharded_step_worker", data_dir],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["devices"] == 8
    assert "data" in out["fsdp"]["sharding"]  # fsdp really splits the parameters
    assert out["data"]["batch_shards"] == out["fsdp"]["batch_shards"] == 8  # and both split the batch
    assert out["seq"]["batch_shards"] == 8  # 2 batch halves x 4 sequence quarters
    for kind in ("data", "fsdp", "seq"):
        np.testing.assert_allclose(out[kind]["losses"], out["none"]["losses"], rtol=1e-5)
        np.testing.assert_allclose(out[kind]["param"], out["none"]["param"], rtol=1e-4, atol=1e-6)
        for got, want in zip(out[kind]["grads"], out["none"]["grads"], strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-7)
    # Sequence-parallel attention moves d x d states: no all-gather (or scatter / permute) in the whole
    # step is larger than the 4 states of a seq group, i.e. keys, values and activations stay put; the
    # all-reduces are the gradients' (parameters are replicated over both axes).
    b, t, h, d = out["shape"]
    moved = [c for c in out["seq"]["collectives"] if c["op"] != "all-reduce"]
    assert moved and all(c["bytes"] <= 4 * (b // 2) * h * d * d * 4 for c in moved), moved
    assert any(c["op"] == "all-gather" and "shard_map" in c["op_name"] for c in moved)


def test_resume_refuses_a_different_config(data_dir, tmp_path):
    cfg = _config("gpt-tiny", data_dir, "steps=10", "checkpoint_every=10", "eval_every=10", "sample_tokens=0")
    train_and_evaluate(cfg, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"different run: model.attention 'cosine' -> 'softmax' \(saved -> now\)"):
        train_and_evaluate(apply_overrides(cfg, ["model.attention=softmax"]), tmp_path, progress=False)
    # how the step is computed may change (remat, loss chunks, implementation): the same run resumes
    same_run = apply_overrides(cfg, ["model.remat=block", "model.loss_chunk=32", "model.implementation=reference"])
    assert train_and_evaluate(same_run, tmp_path, progress=False)["final_eval"]["count"] > 0


def test_resume_compares_what_the_run_is_not_where_its_data_is_cached(data_dir):
    cfg = _config("gpt-tiny", data_dir)
    saved = to_dict(cfg)
    _check_resumable(saved, apply_overrides(cfg, ["data.data_dir=/elsewhere", "model.remat=block", "steps=99"]))
    with pytest.raises(ValueError, match=r"different run: data.seq_len 64 -> 32 \(saved -> now\)\. Resume"):
        _check_resumable(saved, apply_overrides(cfg, ["data.seq_len=32"]))


def _all_finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact))


def test_divergence_stops_the_run_and_keeps_the_last_finite_checkpoint(data_dir, tmp_path):
    """learning_rate=1e6 is NaN within a few steps: the run used to go on, rotate out the last finite
    checkpoint, keep 100%-NaN ones and exit 0."""
    cfg = _config(
        "gpt-tiny",
        data_dir,
        "optim.learning_rate=1e6",
        "steps=40",
        "checkpoint_every=10",
        "keep_checkpoints=2",
        "eval_every=1000",
        "sample_tokens=0",
    )
    with pytest.raises(
        TrainingDivergedError,
        match=r"training diverged at step \d+: loss nan.*last checkpoint "
        r"\(step \d+\) is kept",
    ):
        train_and_evaluate(cfg, tmp_path, progress=False)
    ckpt = Checkpointer(tmp_path / "checkpoints", save_every=10, keep=2)
    steps = ckpt.manager.all_steps()
    assert steps and all(ckpt.damage(s) is None for s in steps)
    saved = from_dict(ckpt.read_config())  # the run's config (its vocabulary is the tokenizer's)
    for step in steps:  # every checkpoint left is finite, and restores
        model = build_model(saved)
        opt = build_optimizer(model, saved.optim, saved.steps)
        ckpt.restore(model, opt, step=step)
        assert _all_finite(nnx.state((model, opt)))
    ckpt.close()
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / LOCK_FILE).exists()


HOLD_LOCK = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("workdir_lock", sys.argv[2])
lock = importlib.util.module_from_spec(spec); spec.loader.exec_module(lock)
with lock.WorkdirLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_run_in_a_locked_workdir_fails_at_once(data_dir, tmp_path):
    """Two runs in one workdir used to both exit 0 with two losses per step in metrics.jsonl."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path), str(REPO / "cottention_jax" / "workdir_lock.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLockedError, match=rf"in use by another run: pid {holder.pid}"):
            train_and_evaluate(_config("gpt-tiny", data_dir, "steps=5"), tmp_path, progress=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # nothing written: no metrics,
        # the command line says it in one line (no traceback) and exits non-zero  # no tensorboard, no checkpoint
        with pytest.raises(SystemExit) as stopped:
            train_cli(
                [
                    "--preset",
                    "gpt-tiny",
                    "--workdir",
                    str(tmp_path),
                    "--no-progress",
                    "--set",
                    f"data.data_dir={data_dir}",
                ],
                description="",
                default_preset="gpt-tiny",
                kinds=("gpt",),
            )
        message = str(stopped.value.code)
        assert "\n" not in message and f"WorkdirLockedError: workdir {tmp_path}" in message, message
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_resume_skips_a_damaged_checkpoint_and_continues_exactly(data_dir, tmp_path, capsys):
    """64 flipped bytes in the latest checkpoint used to resume from it ('resumed from step 20'), NaN
    later, exit 0. Now that step is skipped with a one-line warning, the run resumes from the previous
    one and recomputes the same losses, bit for bit."""
    cfg = _config(
        "gpt-tiny",
        data_dir,
        "steps=20",
        "checkpoint_every=10",
        "eval_every=1000",
        "log_every=1",
        "sample_tokens=0",
        "model.dropout_rate=0.1",
    )
    train_and_evaluate(cfg, tmp_path, progress=False)
    first = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"}
    victim = max(
        (p for p in (tmp_path / "checkpoints" / "20").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    raw = bytearray(victim.read_bytes())
    raw[1000:1064] = bytes(b ^ 0x5A for b in raw[1000:1064])
    victim.write_bytes(bytes(raw))
    capsys.readouterr()
    train_and_evaluate(cfg, tmp_path, progress=False)
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and "checkpoint 20" in warnings[0] and victim.name in warnings[0], out
    assert "resumed from step 10" in out
    again = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl") if r["split"] == "train"}
    assert [again[s] for s in range(11, 21)] == [first[s] for s in range(11, 21)]
    assert (tmp_path / "checkpoints" / "damaged" / "20").is_dir()
    assert Checkpointer(tmp_path / "checkpoints", save_every=10, keep=3).damage(20) is None  # saved anew


def test_cli_print_config_and_errors(tmp_path):
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "train_bert.py"),
            "--finetune",
            "--task",
            "paraphrase",
            "--set",
            "steps=7",
            "--print-config",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    cfg = from_dict(json.loads(run.stdout))
    assert (cfg.kind, cfg.data.task, cfg.steps, cfg.init_from) == ("bert-classify", "paraphrase", 7, "runs/bert-small")
    with pytest.raises(ValueError, match=r"unknown config key 'model.atention'"):
        apply_overrides(cfg, ["model.atention=softmax"])
    with pytest.raises(ValueError, match=r"cannot set steps \(type int\) to 'many'"):
        apply_overrides(cfg, ["steps=many"])
    with pytest.raises(ValueError, match=r"kind='bert-classify' needs data.task"):
        apply_overrides(cfg, ["data.task=none"])


def _write_synthetic_sentiment(data_dir, n=600):
    """A learnable stand-in for the real task (which is built from the registries): words of
    praise vs words of scorn in Shakespearean sentences."""
    from cottention_jax.data import tasks

    rng = np.random.default_rng(0)
    good = "sweet gentle noble fair honest worthy kind".split()
    bad = "vile foul base false wretched cursed rotten".split()
    filler = "my lord the king doth speak of thee and thy house this day".split()
    examples = []
    for i in range(n):
        label = i % 2
        words = list(rng.choice(filler, 6)) + list(rng.choice(good if label else bad, 2))
        rng.shuffle(words)
        split = "train" if i < 400 else ("validation" if i < 500 else "test")
        examples.append({"id": f"s{i}", "text_a": " ".join(words), "text_b": "", "label": label, "split": split})
    tasks.write_task("sentiment", examples, "# synthetic test task\n", data_dir)


def test_bert_pretrain_then_finetune(data_dir, tmp_path):
    _write_synthetic_sentiment(data_dir)
    pre = _config("bert-tiny", data_dir, "steps=10", "checkpoint_every=10", "eval_every=10")
    train_and_evaluate(pre, tmp_path / "mlm", progress=False)
    run = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "train_bert.py"),
            "--preset",
            "bert-tiny",
            "--finetune",
            "--task",
            "sentiment",
            "--init-from",
            str(tmp_path / "mlm"),
            "--workdir",
            str(tmp_path / "ft"),
            "--no-progress",
            "--set",
            f"data.data_dir={data_dir}",
            "--set",
            "steps=60",
            "--set",
            "optim.learning_rate=2e-3",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    summary = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert summary["kind"] == "bert-classify" and summary["test"]["count"] == 100
    assert summary["test"]["accuracy"] >= 0.9, summary["test"]
    assert "initialised" in run.stdout + run.stderr


# ----------------------------------------------------------------------------- extending, init_from, vocabulary


def _cosine_lr(optim, total: int, count: int) -> float:
    """The learning rate at optimizer count `count` of a `total`-step cosine schedule, written out."""
    warmup = min(optim.warmup_steps, total - 1)
    peak, end = optim.learning_rate, optim.learning_rate * optim.end_lr_ratio
    if count < warmup:
        return peak * count / warmup
    return end + (peak - end) * 0.5 * (1 + np.cos(np.pi * (count - warmup) / (total - warmup)))


@pytest.mark.slow
def test_a_finished_run_extends_to_more_steps_and_its_reruns_repeat_no_record(data_dir, tmp_path, capsys):
    """A finished 4-step run continued to 8 used to be refused ('Use a new workdir'); a rerun of a finished
    run wrote its last eval and stabilizer records again; the first train line after a resume from
    step 4 (log_every=3) averaged 2 steps and did not say so."""
    cfg = _config(
        "gpt-tiny",
        data_dir,
        "steps=4",
        "log_every=3",
        "checkpoint_every=4",
        "eval_every=4",
        "eval_batches=1",
        "sample_tokens=0",
    )
    losses = {}
    record = hook(lambda run, step: losses.__setitem__(step, run.history[-1]), every=1)
    train_and_evaluate(cfg, tmp_path, progress=False, hooks=[record])
    metrics = tmp_path / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[:-15])  # the last record (stabilizer_heads) cut by a full disk
    capsys.readouterr()
    train_and_evaluate(cfg, tmp_path, progress=False)  # the finished run again: its summary, no new record
    out = capsys.readouterr().out
    assert sum("last line is cut" in line for line in out.splitlines()) == 1, out
    at_4 = [r["split"] for r in read_metrics(metrics) if r["step"] == 4]
    assert sorted(at_4) == ["eval", "stabilizer", "stabilizer_heads", "train"], at_4  # each once, the cut one again

    longer = apply_overrides(cfg, ["steps=8"])
    train_and_evaluate(longer, tmp_path, progress=False, hooks=[record])
    out = capsys.readouterr().out
    assert "resumed from step 4" in out
    (notice,) = [line for line in out.splitlines() if "schedule" in line]
    assert "steps 4 -> 8" in notice and "recomputed" in notice
    assert sorted(losses) == list(range(1, 9))
    train = {r["step"]: r for r in read_metrics(metrics) if r["split"] == "train"}
    assert sorted(train) == [3, 4, 6, 8]
    windows = {3: [1, 2, 3], 4: [4], 6: [5, 6], 8: [7, 8]}  # 6: the steps after the resume only
    for step, window in windows.items():
        assert train[step]["steps_averaged"] == len(window)
        assert train[step]["loss"] == pytest.approx(np.mean([losses[s] for s in window]), rel=1e-12)
    for step, total in ((3, 4), (6, 8), (8, 8)):  # the extension follows the 8-step schedule
        assert train[step]["learning_rate"] == pytest.approx(_cosine_lr(cfg.optim, total, step - 1), rel=1e-5)
    assert [r["step"] for r in read_metrics(metrics) if r["split"] == "eval"] == [0, 4, 8]

    with pytest.raises(ValueError) as refused:  # the architecture: refused, in one line
        train_and_evaluate(apply_overrides(longer, ["model.attention=softmax"]), tmp_path, progress=False)
    message = str(refused.value)
    assert "model.attention 'cosine' -> 'softmax'" in message and "\n" not in message and "{" not in message
    with pytest.raises(ValueError, match=r"steps=6 is below the step of the checkpoint .* \(8\)"):
        train_and_evaluate(apply_overrides(cfg, ["steps=6"]), tmp_path, progress=False)


def _saved_run(workdir: Path, cfg) -> dict:
    """A workdir holding one checkpoint of a freshly built `cfg` model (no training); its {path: array}."""
    model = build_model(cfg, seed=int(jax.random.randint(fresh_key(), (), 0, 2**20)))
    ckpt = Checkpointer(workdir / "checkpoints", save_every=1, keep=1)
    ckpt.save(1, model, build_optimizer(model, cfg.optim, cfg.steps), {}, to_dict(cfg), force=True)
    ckpt.close()
    return {path: np.asarray(v[...]) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_init_from_a_missing_or_empty_workdir_is_refused_and_creates_nothing(data_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    for source, why in ((tmp_path / "missing", "does not exist"), (tmp_path / "empty", "holds no checkpoint")):
        cfg = _config("gpt-tiny", data_dir, f"init_from={source}")
        with pytest.raises(ValueError, match=rf"init_from='{source}' {why}"):
            train_and_evaluate(cfg, tmp_path / "run", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"] and not list((tmp_path / "empty").iterdir())


def test_init_from_another_architecture_is_refused_and_partial_needs_its_flag(data_dir, tmp_path, capsys):
    """A GPT run from a BERT workdir used to log 'initialised 0 of 27 parameter arrays', train from
    scratch and exit 0."""
    _saved_run(tmp_path / "bert", _config("bert-tiny", data_dir))
    cfg = _config("gpt-tiny", data_dir, f"init_from={tmp_path / 'bert'}")
    with pytest.raises(ValueError, match=r"bert-mlm model shares no parameter array with this gpt model \(0 of"):
        train_and_evaluate(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()

    source = _saved_run(tmp_path / "one-layer", _config("gpt-tiny", data_dir, "model.num_layers=1"))
    cfg = _config("gpt-tiny", data_dir, f"init_from={tmp_path / 'one-layer'}")  # two layers
    with pytest.raises(ValueError, match=r"only \d+ of \d+ parameter arrays .* init_from_partial=true"):
        train_and_evaluate(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()

    partial = apply_overrides(cfg, ["init_from_partial=true"])
    (tmp_path / "run").mkdir()
    lines = []
    run = setup_run(partial, tmp_path / "run", log=lines.append)
    run.checkpointer.close()
    run.writer.close()
    scratch = dict(nnx.to_flat_state(nnx.state(build_model(partial), nnx.Param)))
    got = dict(nnx.to_flat_state(nnx.state(run.model, nnx.Param)))
    copied = [p for p in got if p in source]
    assert 0 < len(copied) < len(got)
    for path, value in got.items():  # the first block and the embeddings from the source, the rest as new
        np.testing.assert_array_equal(value[...], source[path] if path in source else scratch[path][...])
    (notice,) = [line for line in lines if line.startswith("initialised")]
    assert f"initialised {len(copied)} of {len(got)} parameter arrays" in notice and "from scratch" in notice


def test_a_vocab_size_set_by_the_user_must_be_the_tokenizers(data_dir, tmp_path):
    """model.vocab_size=1000 used to be replaced by the tokenizer's 512 without a word."""
    cfg = _config("gpt-tiny", data_dir, "model.vocab_size=1000", "steps=2")
    with pytest.raises(ValueError, match=r"model.vocab_size=1000 was set, but the tokenizer .* has 512 tokens"):
        train_and_evaluate(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    # the preset's own value (not the user's) follows the tokenizer, with a notice naming both sizes
    byte = _config("gpt-tiny", data_dir, "data.tokenizer=byte")
    tokens = prepare_data(byte).tokenizer.vocab_size
    lines = []
    (tmp_path / "byte").mkdir()
    run = setup_run(byte, tmp_path / "byte", log=lines.append)
    run.checkpointer.close()
    run.writer.close()
    assert run.config.model.vocab_size == tokens != byte.model.vocab_size
    assert any(f"model.vocab_size {byte.model.vocab_size} -> {tokens}" in line for line in lines), lines
