"""Orbax checkpoints of a training run: {model, optimizer, step} + data-iterator state + config.

Nothing is lost, and nothing restored is silently wrong:

- Atomic: Orbax writes each step under a temporary name and renames it when complete, so
  an interrupted save never leaves a checkpoint that looks whole.
- Checksummed: once a save has completed, the SHA-256 of every file of the step goes to
  `<step>/SHA256SUMS` (`checkpoint_checksums`). Orbax 0.12 checks no data file itself (its
  zarr3 layout checksums only shard indexes), so a flipped bit would otherwise restore.
- Verified restore with fallback: `restore` takes the newest checkpoint whose files match
  their checksums and which Orbax reads; each one skipped is named in a one-line message
  and moved to `<directory>/damaged/`, so the run can write that step again. A checkpoint
  without checksums (saved before they existed, or killed between the save and its
  checksums) is restored unverified, still falling back if Orbax cannot read it.
  `restore_params` and `read_config` (a trained model, a run's config) fall back the same way,
  with the same one-line warnings, but move nothing.
- Finite only: `save` refuses a state holding a NaN or an infinity (`NonFiniteStateError`).
- A failed save (a full disk) is one line, `CheckpointSaveError`; its partial files are
  removed and the earlier checkpoints are untouched (Orbax rotates old ones out only after
  a save completes). Saves are synchronous so that this happens at the failing step. The
  tracebacks that Orbax's threads and its closed event loop leave after a failed save or
  restore are dropped (`_quiet_orbax_errors`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from cottention_jax.checkpoint_checksums import MANIFEST, find_damage, write_manifest

__all__ = ["CheckpointError", "CheckpointSaveError", "Checkpointer", "NonFiniteStateError"]

DAMAGED_DIR = "damaged"
_T = TypeVar("_T")


class CheckpointError(RuntimeError):
    """No checkpoint could be restored, or one could not be saved; the message is one line."""


class CheckpointSaveError(CheckpointError):
    """A save failed (e.g. the disk is full); the earlier checkpoints are intact. `orbax_error` is the
    error Orbax raised, for a closer look."""

    orbax_error: BaseException | None = None


class NonFiniteStateError(CheckpointError):
    """The state to save holds NaN or inf values; nothing was written."""


def _sync(name: str) -> None:
    """Wait until every process of a multi-process run gets here (nothing for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        multihost_utils.sync_global_devices(name)


def _primary() -> bool:
    return jax.process_index() == 0


def _chain(err: BaseException | None) -> list[BaseException]:
    """err, its cause (or context), that one's, ... (at most 20)."""
    chain: list[BaseException] = []
    while err is not None and len(chain) < 20:
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _error_summary(err: BaseException) -> str:
    """One line for an Orbax / TensorStore error: the OS error when there is one, else the first line of
    the error it was raised from (Orbax wraps TensorStore's specific error in a generic one)."""
    chain = _chain(err)
    for e in chain:
        if isinstance(e, OSError) and e.errno:
            return f"{os.strerror(e.errno)} (errno {e.errno})"
    for e in chain:
        code = re.search(r"os_error_code='?(\d+)", str(e))
        if code:
            return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
    root = err  # the most specific error it was raised from: TensorStore's own
    while root.__cause__ is not None and str(root.__cause__).strip():
        root = root.__cause__
    first = (str(root).strip().splitlines() or [type(root).__name__])[0]
    first = re.sub(r"\s*\[source locations=.*$", "", first)
    return f"{type(root).__name__}: {first[:300]}"


class _ConfigRefused(Exception):
    """Carries what `check_config` raised through the fallback loop: a refusal, not damage."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


class _DropErrorRecords(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


def _is_orbax_teardown_noise(unraisable: sys.UnraisableHookArgs) -> bool:
    """Whether an unraisable exception is what a failed Orbax save or restore leaves behind.

    Orbax runs a save or restore as one `asyncio.gather` of TensorStore reads/writes in an event
    loop of its own. When one fails (a full disk, a damaged file), the gather raises at once and
    Orbax closes the loop while the others are still in flight. Then (1) as each TensorStore
    operation completes, its callback (`loop.call_soon_threadsafe`) raises "Event loop is closed"
    in a TensorStore thread, and (2) each Orbax coroutine left suspended raises again when the
    garbage collector closes it (GeneratorExit). Python prints every one as an unraisable exception:
    tens of tracebacks after the one real error, which the caller reports.
    """
    err, tb = unraisable.exc_value, unraisable.exc_traceback
    if isinstance(err, RuntimeError) and str(err) == "Event loop is closed" and unraisable.object is None:
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        return tb is not None and tb.tb_frame.f_code.co_name == "_check_closed"  # (1)
    code = getattr(unraisable.object, "cr_code", None)
    if code is None or f"{os.sep}orbax{os.sep}" not in code.co_filename:
        return False
    return any(isinstance(e, GeneratorExit) for e in _chain(err))  # (2)


_noise_filter: Callable[[sys.UnraisableHookArgs], object] | None = None


def _drop_orbax_teardown_noise() -> None:
    """Wrap `sys.unraisablehook` (once; again if someone replaced it) so that what
    `_is_orbax_teardown_noise` matches is dropped; every other unraisable exception still goes to the
    previous hook. It stays installed: that noise may come after the failed call has returned."""
    global _noise_filter
    previous = sys.unraisablehook
    if previous is _noise_filter:
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not _is_orbax_teardown_noise(unraisable):
            previous(unraisable)

    _noise_filter = sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_orbax_errors():
    """Orbax logs each failure of its writer threads with a traceback (hundreds of lines) before
    raising, and its closed event loop leaves tens more (`_is_orbax_teardown_noise`); the failure is
    reported once, as one line, by the caller instead."""
    _drop_orbax_teardown_noise()
    logger, quiet = logging.getLogger("absl"), _DropErrorRecords()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Checkpointer:
    """Save and restore `{model, optimizer, step}`, the data iterator's JSON state and the config.

    directory: where step directories go; save_every: steps between saves;
    keep: how many of the latest checkpoints to keep; log: where one-line notices of
    skipped checkpoints go (default: stderr).
    """

    def __init__(
        self, directory: str | os.PathLike, *, save_every: int, keep: int, log: Callable[[str], None] | None = None
    ):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every, create=True)
        self.directory = os.path.abspath(os.fspath(directory))
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        self.log = log or (lambda line: print(line, file=sys.stderr))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _step_dir(self, step: int) -> Path:
        return Path(self.directory) / str(step)

    # ----------------------------------------------------------------------------- save

    def save(
        self,
        step: int,
        model: nnx.Module,
        optimizer: nnx.Optimizer,
        data_state: dict,
        config: dict,
        *,
        force: bool = False,
    ) -> bool:
        """Save if `step` is on the save interval (or `force`); returns whether it saved.

        Raises NonFiniteStateError (nothing written) for a NaN/inf state and CheckpointSaveError
        when the write fails (partial files removed, earlier checkpoints intact).
        """
        if not (force or self.manager.should_save(step)):
            return False
        state = {"model": nnx.state(model), "optimizer": nnx.state(optimizer), "step": jnp.asarray(step, jnp.int32)}
        previous = self.latest_step()
        kept = "no earlier checkpoint" if previous is None else f"the last checkpoint (step {previous}) is kept"
        if not bool(_all_finite(state)):
            raise NonFiniteStateError(
                f"refusing to save checkpoint {step}: the model or optimizer state holds NaN or inf values; {kept}"
            )
        try:
            with _quiet_orbax_errors():
                saved = self.manager.save(
                    step,
                    force=force,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state),
                        data=ocp.args.JsonSave(data_state),
                        config=ocp.args.JsonSave(config),
                    ),
                )
                self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001  (Orbax and TensorStore raise many types)
            self._discard_partial(step)
            free = shutil.disk_usage(self.directory).free
            error = CheckpointSaveError(
                f"could not save checkpoint {step} in {self.directory}: "
                f"{_error_summary(err)}; {free / 2**20:,.0f} MiB free there. Nothing "
                f"of step {step} was kept and {kept}: free space, then rerun to resume"
            )
            error.orbax_error = err
            raise error from None
        if saved:
            _sync(f"cottention-saved-{step}")  # every process has committed its part of the step
            try:
                if _primary():
                    write_manifest(self._step_dir(step))
            except OSError as err:
                raise CheckpointSaveError(
                    f"checkpoint {step} in {self.directory} was saved but its checksums "
                    f"could not be written: {_error_summary(err)}"
                ) from None
            _sync(f"cottention-checksummed-{step}")
        return saved

    def _discard_partial(self, step: int) -> None:
        """Remove what a failed save left (Orbax's temporary directory) and resynchronise the manager."""
        for partial in Path(self.directory).glob(f"{step}.orbax-checkpoint-tmp*") if _primary() else ():
            shutil.rmtree(partial, ignore_errors=True)
        with contextlib.suppress(Exception), _quiet_orbax_errors():
            self.manager.reload()

    # ----------------------------------------------------------------------------- restore

    def damage(self, step: int) -> str | None:
        """What is wrong with checkpoint `step`'s files (missing, altered), or None when they match
        their checksums. A checkpoint without checksums reports None (`has_checksums` says which)."""
        return find_damage(self._step_dir(step))

    def has_checksums(self, step: int) -> bool:
        return (self._step_dir(step) / MANIFEST).is_file()

    def _candidates(self, step: int | None) -> list[int]:
        """`[step]`, or (None) every step, newest first; FileNotFoundError for none or a step not there."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step is None:
            return steps
        if step not in steps:
            raise FileNotFoundError(f"no checkpoint of step {step} in {self.directory}; there are {sorted(steps)}")
        return [step]

    def _read_config(self, step: int) -> dict:
        with _quiet_orbax_errors():
            restored = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
        return dict(restored.config)

    def _first_intact(
        self, step: int | None, load: Callable[[int], _T], *, notice_unverified: bool = True
    ) -> tuple[int, _T, list[tuple[int, str]]]:
        """The newest candidate step that verifies and that `load(step)` reads: (step, what load returned,
        [(skipped step, why)], newest first). Raises CheckpointError when none does.

        A step without checksums is tried unverified: if load reads it, a one-line notice says so
        (unless not notice_unverified); if not, it is skipped as damaged like any other."""
        skipped: list[tuple[int, str]] = []
        for candidate in self._candidates(step):
            damage = self.damage(candidate)
            if damage is None:
                try:
                    loaded = load(candidate)
                except _ConfigRefused as refused:
                    raise refused.error from None
                except Exception as err:  # noqa: BLE001  (TensorStore / Orbax / JSON errors of a damaged file)
                    damage = _error_summary(err)
                    if not self.has_checksums(candidate):
                        damage = f"unreadable, and it has no {MANIFEST} to check: {damage}"
                else:
                    if notice_unverified and not self.has_checksums(candidate):
                        self.log(
                            f"checkpoint {candidate} in {self.directory} has no {MANIFEST} (saved before "
                            "checksums, or stopped right after the save): restored unverified"
                        )
                    return candidate, loaded, skipped
            skipped.append((candidate, damage))
        raise CheckpointError(
            f"no intact checkpoint in {self.directory}: " + "; ".join(f"step {s}: {why}" for s, why in skipped)
        )

    def _set_aside(self, step: int) -> Path:
        """Move a damaged step out of Orbax's way (kept for inspection) so that it can be written again."""
        target_root = Path(self.directory) / DAMAGED_DIR
        target_root.mkdir(exist_ok=True)
        target, n = target_root / str(step), 1
        while target.exists():
            target, n = target_root / f"{step}-{n}", n + 1
        os.replace(self._step_dir(step), target)
        return target

    def _report_skipped(self, skipped: list, restored: int, set_aside: bool) -> None:
        """Warn of each skipped step; with set_aside, the primary process moves them away (all wait for it)."""
        for step, why in skipped:
            where = f"; moved to {self._set_aside(step)}" if set_aside and _primary() else ""
            self.log(
                f"warning: checkpoint {step} in {self.directory} is damaged ({why}): skipped, "
                f"using step {restored}{where}"
            )
        if skipped and set_aside:
            _sync("cottention-set-aside")
            self.manager.reload()

    def restore(
        self,
        model: nnx.Module,
        optimizer: nnx.Optimizer,
        step: int | None = None,
        *,
        check_config: Callable[[dict], None] | None = None,
        set_aside_damaged: bool = True,
    ) -> tuple[int, dict, dict]:
        """Load a checkpoint into `model` and `optimizer` in place: `step`, or by default the newest
        intact one (see the module docstring); returns (step, data_state, config_dict).

        check_config(config) runs on the saved config before any array is read; what it raises
        propagates (it is a refusal, not damage). The arrays keep the shardings of the current
        model/optimizer state. set_aside_damaged: move skipped (damaged) newer steps to
        `<directory>/damaged/`; a run that continues from an older step must, to write them again.
        """
        current = {"model": nnx.state(model), "optimizer": nnx.state(optimizer), "step": jnp.zeros((), jnp.int32)}
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, current)

        def load(candidate: int):
            config = self._read_config(candidate)
            if check_config is not None:
                try:
                    check_config(config)
                except Exception as err:
                    raise _ConfigRefused(err) from err
            with _quiet_orbax_errors():
                return self.manager.restore(
                    candidate,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(target),
                        data=ocp.args.JsonRestore(),
                        config=ocp.args.JsonRestore(),
                    ),
                )

        found, restored, skipped = self._first_intact(step, load)
        self._report_skipped(skipped, found, set_aside_damaged)
        nnx.update(model, restored.state["model"])
        nnx.update(optimizer, restored.state["optimizer"])
        return int(restored.state["step"]), dict(restored.data), dict(restored.config)

    def read_config(self, step: int | None = None) -> dict:
        """The config saved with a checkpoint (default: the newest intact one), without loading any arrays.
        Skipped (damaged) steps are warned of in one line each and left in place."""
        found, config, skipped = self._first_intact(step, self._read_config, notice_unverified=False)
        self._report_skipped(skipped, found, set_aside=False)
        return config

    def restore_params(self, target: Callable[[dict], Any], step: int | None = None) -> tuple[int, dict, Any]:
        """The model parameters of a checkpoint, without the optimizer state: `step`, or by default the
        newest intact one (as `restore`, but damaged steps are only warned of, one line each, and left in
        place: reading a run changes nothing in it). Returns (step, config_dict, parameters).

        target(config) gets the step's saved config before any array is read and returns the
        abstract parameter tree to read (`jax.ShapeDtypeStruct` leaves with shardings, the structure of
        `nnx.state(model, nnx.Param)`); what it raises propagates (a refusal, not damage).
        """

        def load(candidate: int) -> tuple[dict, Any]:
            config = self._read_config(candidate)
            try:
                abstract = target(config)
            except Exception as err:
                raise _ConfigRefused(err) from err
            restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
            with _quiet_orbax_errors():  # partial: the optimizer's subtree is never read
                restored = self.manager.restore(
                    candidate,
                    args=ocp.args.Composite(
                        state=ocp.args.PyTreeRestore(
                            item={"model": abstract}, restore_args={"model": restore_args}, partial_restore=True
                        )
                    ),
                )
            return config, restored.state["model"]

        found, (config, params), skipped = self._first_intact(step, load)
        self._report_skipped(skipped, found, set_aside=False)
        return found, config, params

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
