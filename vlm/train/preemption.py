"""Stop requests from the scheduler: SIGTERM (preemption, `scancel`, torchrun's shutdown) and SIGUSR1 (SLURM's
`--signal=USR1@N` warning before a time limit) ask the trainer to finish its current step, save a checkpoint and
exit 0, instead of dying with everything since the last checkpoint lost.

The handler only records the signal; the trainer asks `requested()` at each step's end, and under torchrun the
ranks agree on it in one all-reduce with the step's other flags, so all of them stop after the same step even if
the signal reached only some."""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """`with StopRequest() as stop:` ... `stop.requested()` -> the signal's name once one arrived, else None.
    The previous handlers are restored on exit. Outside the main thread (where Python allows no handlers) it
    installs nothing and never reports a request."""

    def __init__(self, signals: tuple[signal.Signals, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, object] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._record)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _record(self, signum: int, frame) -> None:
        if self.received is None:  # the first signal names the stop; repeats change nothing
            self.received = signal.Signals(signum)

    def requested(self) -> str | None:
        return self.received.name if self.received is not None else None


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A loader worker's init: the stop signals reach the whole process group, and a worker they killed would
    fail the step the trainer is finishing; the trainer shuts its workers down itself."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
