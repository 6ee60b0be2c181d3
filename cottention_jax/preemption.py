"""Stopping a run cleanly on SIGTERM (a cluster's preemption notice) or SIGINT (Ctrl-C).

    with StopSignals() as signals:
        for step in ...:
            train_step(...)
            signum = signals.agreed(step)        # the same answer in every process
            if signum: save a checkpoint at `step`, then raise RunInterrupted(step, signum)

The handlers only record the signal; the training loop acts on it at the next step boundary, so
a step is never cut in half and the checkpoint holds a whole one. In a multi-process run the
processes may receive the signal at different steps (or only some of them): `agreed(step)`
gathers every process's flag at each step (one tiny all-gather), so all of them stop at the
same step and take part in its checkpoint. The exit status of the commands is 128 + the signal
number: 143 for SIGTERM, 130 for SIGINT (`RunInterrupted.exit_status`).

Outside the `with` block the previous handlers are back: a signal during data preparation or
compilation before the loop starts acts as it would without this module.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

import jax
import numpy as np

__all__ = ["RunInterrupted", "StopSignals"]

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# what signal.signal takes and returns: a function, SIG_DFL / SIG_IGN, or None (not set from Python)
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class RunInterrupted(Exception):
    """The run stopped at `step` on signal `signum`, after saving a checkpoint of that step."""

    def __init__(self, step: int, signum: int, saved: bool):
        name = signal.Signals(signum).name
        kept = f"a checkpoint of step {step} was saved" if saved else "no checkpoint could be kept"
        super().__init__(f"stopped by {name} after step {step}: {kept}; run the same command again to resume")
        self.step, self.signum, self.saved = step, signum, saved

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class StopSignals:
    """Records SIGTERM / SIGINT while active (a context manager); see the module docstring."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, _Handler] = {}

    def _record(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum

    def __enter__(self) -> StopSignals:
        for signum in _SIGNALS:
            self._previous[signum] = signal.signal(signum, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def agreed(self, step: int) -> int | None:
        """The signal to stop on after `step`, the same in every process (None: go on)."""
        if jax.process_count() == 1:
            return self.received
        from jax.experimental import multihost_utils  # noqa: PLC0415

        flags = multihost_utils.process_allgather(np.asarray(self.received or 0, np.int32))
        received = [int(f) for f in np.ravel(flags) if f]
        return received[0] if received else None
