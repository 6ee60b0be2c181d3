"""Checkpoints: checksums after every save, verified restore with fallback, one-line save errors.

Damage is done to real Orbax checkpoints of the gpt-tiny model and optimizer (a flipped
bit, 64 flipped bytes, a truncated or a deleted file), and every restore is compared with
the exact state that was saved at the step it reports.
"""

import asyncio
import errno
import hashlib
import logging
import os
import resource
import signal
import subprocess
import sys
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cottention_jax.checkpoint import Checkpointer, CheckpointError, CheckpointSaveError, NonFiniteStateError
from cottention_jax.checkpoint_checksums import MANIFEST, read_manifest
from cottention_jax.configs import to_dict, train_preset
from cottention_jax.train import build_model, build_optimizer
from tests._util import REPO_ROOT, fresh_key

CONFIG = train_preset("gpt-tiny")


def _fresh():
    model = build_model(CONFIG, seed=int(jax.random.randint(fresh_key(), (), 0, 1000)))
    return model, build_optimizer(model, CONFIG.optim, CONFIG.steps)


def _advance(model, opt):
    """One optimizer update with random gradients: every saved step holds a different state."""
    params = nnx.state(model, nnx.Param)
    keys = iter(jax.random.split(fresh_key(), len(jax.tree.leaves(params))))
    opt.update(model, jax.tree.map(lambda p: jax.random.normal(next(keys), p.shape, p.dtype), params))


def _arrays(model, opt):
    return [
        np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in jax.tree.leaves(nnx.state((model, opt)))
    ]


@pytest.fixture
def saved(tmp_path):
    """Checkpoints at steps 1, 2 and 3 in tmp_path/ckpt; returns (dir, {step: arrays}, log lines)."""
    lines = []
    ckpt = Checkpointer(tmp_path / "ckpt", save_every=1, keep=5, log=lines.append)
    model, opt = _fresh()
    states = {}
    for step in (1, 2, 3):
        _advance(model, opt)
        assert ckpt.save(step, model, opt, {"position": step}, to_dict(CONFIG))
        states[step] = _arrays(model, opt)
    ckpt.close()
    return tmp_path / "ckpt", states, lines


def _restore(directory, **kw):
    lines = []
    ckpt = Checkpointer(directory, save_every=1, keep=5, log=lines.append)
    model, opt = _fresh()
    step, data, _ = ckpt.restore(model, opt, **kw)
    ckpt.close()
    return step, data, _arrays(model, opt), lines


def _data_files(step_dir: Path) -> list[Path]:
    """The array data files of a step, largest first (what holds the parameters)."""
    files = [p for p in step_dir.rglob("*") if p.is_file() and "/d/" in p.as_posix()]
    return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_checksums_cover_every_file_of_the_step(saved):
    directory, _, _ = saved
    step_dir = directory / "3"
    sums = read_manifest(step_dir)
    files = sorted(
        p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST
    )
    assert sorted(sums) == files and len(files) > 5
    for rel, digest in sums.items():  # an independent hash of each file
        assert hashlib.sha256((step_dir / rel).read_bytes()).hexdigest() == digest


def test_64_flipped_bytes_in_the_latest_checkpoint_fall_back_to_the_previous(saved):
    directory, states, _ = saved
    victim = _data_files(directory / "3")[0]
    raw = bytearray(victim.read_bytes())
    start = len(raw) // 3
    raw[start : start + 64] = bytes(b ^ 0xFF for b in raw[start : start + 64])
    victim.write_bytes(bytes(raw))

    step, data, arrays, lines = _restore(directory)
    assert step == 2 and data == {"position": 2}
    _assert_same(arrays, states[2])
    assert len(lines) == 1 and "checkpoint 3" in lines[0] and victim.name in lines[0], lines
    assert "\n" not in lines[0]
    assert not (directory / "3").exists() and (directory / "damaged" / "3").is_dir()  # kept, out of the way
    ckpt = Checkpointer(directory, save_every=1, keep=5)
    assert ckpt.latest_step() == 2  # and step 3 can be written again
    model, opt = _fresh()
    assert ckpt.save(3, model, opt, {"position": 3}, to_dict(CONFIG))
    ckpt.close()


def test_every_single_bit_flip_is_detected(saved):
    directory, _, _ = saved
    ckpt = Checkpointer(directory, save_every=1, keep=5)
    step_dir = directory / "2"
    files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST]
    rng = np.random.default_rng(int(jax.random.randint(fresh_key(), (), 0, 2**30)))
    for _ in range(24):
        victim = files[int(rng.integers(len(files)))]
        raw = bytearray(victim.read_bytes())
        at, bit = int(rng.integers(len(raw))), int(rng.integers(8))
        raw[at] ^= 1 << bit
        victim.write_bytes(bytes(raw))
        damage = ckpt.damage(2)
        assert damage is not None and victim.relative_to(step_dir).as_posix() in damage
        raw[at] ^= 1 << bit  # undo before the next trial
        victim.write_bytes(bytes(raw))
        assert ckpt.damage(2) is None
    ckpt.close()


@pytest.mark.parametrize("harm", ["truncate", "delete"])
def test_truncated_or_deleted_file_falls_back_with_one_line(saved, harm):
    directory, states, _ = saved
    victim = _data_files(directory / "3")[0]
    if harm == "truncate":
        victim.write_bytes(victim.read_bytes()[:100])
    else:
        victim.unlink()
    step, _, arrays, lines = _restore(directory)
    assert step == 2
    _assert_same(arrays, states[2])
    assert len(lines) == 1 and ("missing" if harm == "delete" else "truncated or altered") in lines[0]


def test_an_unverified_checkpoint_that_orbax_cannot_read_falls_back(saved):
    """Without SHA256SUMS (a checkpoint from before checksums) the Orbax error itself triggers the
    fallback, summarised in one line instead of a TensorStore traceback."""
    directory, states, _ = saved
    (directory / "3" / MANIFEST).unlink()
    victim = _data_files(directory / "3")[0]
    victim.write_bytes(victim.read_bytes()[:100])
    step, _, arrays, lines = _restore(directory)
    assert step == 2
    _assert_same(arrays, states[2])
    assert len(lines) == 1, lines  # step 3 was not restored: no "restored unverified" notice
    assert "checkpoint 3" in lines[0] and "damaged" in lines[0] and "no SHA256SUMS" in lines[0]
    assert "using step 2" in lines[0] and "\n" not in lines[0]
    assert "Traceback" not in lines[0] and len(lines[0]) < 1000


def test_an_unverified_checkpoint_that_orbax_reads_is_restored_with_a_notice(saved):
    directory, states, _ = saved
    (directory / "3" / MANIFEST).unlink()
    step, _, arrays, lines = _restore(directory)
    assert step == 3
    _assert_same(arrays, states[3])
    assert len(lines) == 1 and "checkpoint 3" in lines[0] and "no SHA256SUMS" in lines[0] and "unverified" in lines[0]


def test_fallback_takes_the_newest_intact_step_past_several_damaged_ones(tmp_path):
    """The fallback order, checked apart from the fixture above: five steps, the two newest damaged in two
    different ways (an altered byte caught by its checksum; an unverified step Orbax cannot read). The
    restore must take step 3 (not 1, the oldest, nor 2), name 5 then 4 in that order, and set both aside."""
    directory = tmp_path / "ckpt"
    ckpt = Checkpointer(directory, save_every=1, keep=10)
    model, opt = _fresh()
    states = {}
    for step in range(1, 6):
        _advance(model, opt)
        ckpt.save(step, model, opt, {"position": step}, to_dict(CONFIG))
        states[step] = _arrays(model, opt)
    ckpt.close()
    files = [p for p in (directory / "5").rglob("*") if p.is_file() and p.name != MANIFEST]
    victim = files[int(jax.random.randint(fresh_key(), (), 0, len(files)))]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    (directory / "4" / MANIFEST).unlink()
    _data_files(directory / "4")[0].write_bytes(b"")

    step, data, arrays, lines = _restore(directory)
    assert step == 3 and data == {"position": 3}
    _assert_same(arrays, states[3])
    assert [line.split(" in ")[0] for line in lines] == ["warning: checkpoint 5", "warning: checkpoint 4"], lines
    assert all("using step 3" in line for line in lines)
    assert victim.relative_to(directory / "5").as_posix() in lines[0] and "no SHA256SUMS" in lines[1]
    assert sorted(p.name for p in (directory / "damaged").iterdir()) == ["4", "5"]
    assert Checkpointer(directory, save_every=1, keep=10).latest_step() == 3


def test_no_intact_checkpoint_is_one_clear_error(saved):
    directory, _, _ = saved
    for step in (1, 2, 3):
        _data_files(directory / str(step))[0].unlink()
    with pytest.raises(CheckpointError) as caught:
        _restore(directory)
    message = str(caught.value)
    assert "no intact checkpoint" in message and "\n" not in message
    assert all(f"step {s}:" in message for s in (1, 2, 3))
    assert all((directory / str(s)).is_dir() for s in (1, 2, 3))  # nothing moved when nothing restored


def test_a_refused_config_is_not_damage(saved):
    directory, _, _ = saved

    def refuse(config):
        raise ValueError("written with a different 'optim'")

    with pytest.raises(ValueError, match="different 'optim'"):
        _restore(directory, check_config=refuse)
    assert (directory / "3").is_dir()


def test_a_non_finite_state_is_never_saved(saved):
    directory, _, _ = saved
    ckpt = Checkpointer(directory, save_every=1, keep=1)
    model, opt = _fresh()
    model.embed.embedding[...] = model.embed.embedding[...].at[0, 0].set(jnp.nan)
    with pytest.raises(NonFiniteStateError, match=r"refusing to save checkpoint 4: .*NaN or inf.*step 3"):
        ckpt.save(4, model, opt, {"position": 4}, to_dict(CONFIG))
    ckpt.close()
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2", "3"]  # keep=1 rotated nothing out


def test_a_failed_save_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, caplog):
    """A write that the OS refuses (here: a file-size limit, as a full disk refuses) mid-save."""
    ckpt = Checkpointer(tmp_path, save_every=1, keep=1)
    model, opt = _fresh()
    assert ckpt.save(1, model, opt, {"position": 1}, to_dict(CONFIG))
    saved_state = _arrays(model, opt)
    _advance(model, opt)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write() instead of a signal
    caplog.set_level(logging.WARNING)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limit[1]))
        with pytest.raises(CheckpointSaveError) as caught:
            ckpt.save(2, model, opt, {"position": 2}, to_dict(CONFIG))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    message = str(caught.value)
    assert "\n" not in message and "could not save checkpoint 2" in message
    assert os.strerror(errno.EFBIG) in message and "step 1) is kept" in message
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # no Orbax traceback logged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]  # no partial step left
    assert ckpt.latest_step() == 1 and ckpt.damage(1) is None
    step, _, arrays, lines = _restore(tmp_path)
    assert step == 1 and not lines
    _assert_same(arrays, saved_state)
    assert ckpt.save(2, model, opt, {"position": 2}, to_dict(CONFIG))  # space again: saving works
    assert ckpt.damage(2) is None and ckpt.latest_step() == 2
    ckpt.close()


_FULL_DISK_SAVE = """
import resource, signal, sys
from cottention_jax.checkpoint import CheckpointSaveError, Checkpointer
from cottention_jax.configs import to_dict, train_preset
from cottention_jax.train import build_model, build_optimizer

config = train_preset("gpt-tiny")
ckpt = Checkpointer(sys.argv[1], save_every=1, keep=2)
model = build_model(config, seed=int(sys.argv[2]))
optimizer = build_optimizer(model, config.optim, config.steps)
ckpt.save(1, model, optimizer, {}, to_dict(config))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # a write past the limit fails (EFBIG), as on a full disk
limit = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, limit[1]))
try:
    ckpt.save(2, model, optimizer, {}, to_dict(config))
except CheckpointSaveError as err:
    resource.setrlimit(resource.RLIMIT_FSIZE, limit)
    print(err, file=sys.stderr)
ckpt.close()
"""


def test_a_failed_save_prints_nothing_but_its_one_line(tmp_path):
    """What a user sees (the process's stderr): Orbax's writer threads fail mid-save and its event loop
    closes with TensorStore writes still in flight; neither their logged tracebacks nor the tens of
    "Event loop is closed" ones of the orphaned callbacks may bury the one line."""
    seed = str(int(jax.random.randint(fresh_key(), (), 0, 1000)))
    run = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SAVE, str(tmp_path / "ckpt"), seed],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stderr.splitlines()
    assert len(lines) == 1, f"{len(lines)} lines on stderr:\n" + "\n".join(lines[:40])
    assert "could not save checkpoint 2" in lines[0] and os.strerror(errno.EFBIG) in lines[0]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["1"]


def _unraisable(err: BaseException, obj=None) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        exc_type=type(err), exc_value=err, exc_traceback=err.__traceback__, err_msg=None, object=obj
    )


def test_only_the_tracebacks_a_failed_orbax_call_leaves_behind_are_dropped(monkeypatch):
    """The two kinds that follow a failed Orbax save or restore (`_is_orbax_teardown_noise`), made for real
    where they can be, are dropped; look-alikes from anywhere else still reach the previous hook."""
    from orbax.checkpoint._src import asyncio_utils

    from cottention_jax import checkpoint

    reached = []
    monkeypatch.setattr(sys, "unraisablehook", reached.append)
    checkpoint._drop_orbax_teardown_noise()
    checkpoint._drop_orbax_teardown_noise()  # installed once
    loop = asyncio.new_event_loop()
    loop.close()
    with pytest.raises(RuntimeError, match="Event loop is closed") as closed:
        loop.call_soon_threadsafe(print)  # (1) what TensorStore's callback does
    orbax_coroutine = asyncio_utils.cancellable(None)  # (2) an Orbax coroutine raising as it is closed
    try:
        raise Exception("Encountered error while reading array index") from GeneratorExit()
    except Exception as err:
        closing = err
    noise = [_unraisable(closed.value), _unraisable(closing, orbax_coroutine)]

    async def not_orbax():
        pass

    other_coroutine = not_orbax()
    try:
        raise RuntimeError("Event loop is closed")
    except RuntimeError as err:
        elsewhere = err
    kept = [
        _unraisable(closing, other_coroutine),
        _unraisable(elsewhere),
        _unraisable(ValueError("a real problem"), orbax_coroutine),
        _unraisable(closed.value, orbax_coroutine),
    ]
    for item in noise + kept:
        sys.unraisablehook(item)
    orbax_coroutine.close()
    other_coroutine.close()
    assert reached == kept


def test_a_full_disk_is_named_in_the_summary_line():
    """TensorStore reports the OS error as text (`[os_error_code='28']`, seen as '27' in the test above);
    Python code raises OSError: either way the line names the OS error, not the stack."""
    from cottention_jax.checkpoint import _error_summary

    tensorstore_style = ValueError(
        'OUT_OF_RANGE: Error writing "w/0.0" in OCDBT database at local file "/x/2.orbax-checkpoint-tmp/": '
        "Failed to write 312952 bytes to file 7: No space left on device [os_error_code='28'] "
        "[source locations='tensorstore/kvstore/file/file_key_value_store.cc:300']"
    )
    assert _error_summary(tensorstore_style) == f"{os.strerror(errno.ENOSPC)} (errno {errno.ENOSPC})"
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as inner:
            raise RuntimeError("commit failed") from inner
    except RuntimeError as outer:
        assert _error_summary(outer) == f"{os.strerror(errno.ENOSPC)} (errno {errno.ENOSPC})"
    assert _error_summary(ValueError("first line\nsecond line")) == "ValueError: first line"
