"""How a training run stops early: a non-finite loss, or Ctrl-C (SIGINT) or SIGTERM after a whole step.

The loop asks ``StopOnSignal.requested`` between steps, saves a checkpoint of the step it
reached, and raises ``TrainingInterrupted``; the command line exits with 128 + the signal's
number, as a shell does (130 for SIGINT, 143 for SIGTERM).
"""
from __future__ import annotations

import signal
import threading
from contextlib import AbstractContextManager
from pathlib import Path


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the next update."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped training after a whole step.

    ``iter`` is the number of steps done; ``checkpoint`` (None without ``out_dir``) holds
    exactly that state, so ``train(..., resume=True)`` continues as if never stopped.
    """

    def __init__(self, it: int, checkpoint: Path | None, signal_name: str = "SIGINT") -> None:
        where = f"checkpoint saved to {checkpoint}" if checkpoint is not None else "no out_dir, nothing saved"
        super().__init__(f"{signal_name}: training stopped after {it} steps; {where}")
        self.iter = it
        self.checkpoint = checkpoint
        self.signal_name = signal_name


class StopOnSignal(AbstractContextManager):
    """While active, SIGINT (Ctrl-C) and SIGTERM ask the training loop to stop; they do not kill it.

    The loop checks ``requested`` between steps. A second signal interrupts at once
    (``KeyboardInterrupt``). Python lets only the main thread set handlers, so elsewhere this
    does nothing; on exit the previous handlers come back.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum: int, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
