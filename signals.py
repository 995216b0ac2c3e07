"""Stopping a run cleanly: Ctrl-C and SIGTERM (what SLURM sends before pre-emption) ask the
training loop to stop at its next safe point, between two batches, so that every finished
epoch is kept and the same command resumes the run."""
import signal
import threading

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report it


class Interrupted(Exception):
    """A stop was asked for (Ctrl-C, SIGTERM); `signum` says which."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM only ask the training loop to stop at its next safe
    point; a second signal stops at once. Use as a context manager; `check()` raises
    Interrupted once asked."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self.previous = None, {}

    def _handle(self, signum, frame):
        if self.signum is not None:  # asked twice: do not wait for the safe point
            raise Interrupted(signum)
        self.signum = signum

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def check(self):
        if self.signum is not None:
            raise Interrupted(self.signum)
