"""Stopping a run cleanly: Ctrl-C and SIGTERM (what SLURM sends before pre-emption) ask the
training loop to stop at its next safe point, between two batches, so that every finished
epoch is kept and the same command resumes the run.

The time a run spends stopped (SIGSTOP or Ctrl-Z, then SIGCONT) is not training time: it
counts neither toward --max-minutes nor in an epoch's seconds. The wall clock cannot tell
it apart, so `running_time` subtracts, at each SIGCONT, the time since the last tick (the
training and evaluation loops tick before each batch): exact to within one batch."""
import signal
import threading
import time

EXIT_STATUS = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal, as shells report it


class Interrupted(Exception):
    """A stop was asked for (Ctrl-C, SIGTERM); `signum` says which."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """While active, SIGINT and SIGTERM only ask the training loop to stop at its next safe
    point; a second signal, a second or more later, stops at once. Use as a context manager;
    `check()`, called at each safe point, raises Interrupted once asked. `running_time()` is a clock that leaves out the
    time the process was stopped (see the module's docstring)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    # a second signal this soon is the same request delivered twice (a scheduler signals every process
    # of a job, and the launcher passes its own on), not a second Ctrl-C
    REPEAT_SECONDS = 1.0

    def __init__(self):
        self.signum, self.asked_at, self.previous = None, None, {}
        self.stopped_seconds, self.last_check = 0.0, time.perf_counter()

    def _handle(self, signum, frame):
        if self.signum is not None and time.perf_counter() - self.asked_at > self.REPEAT_SECONDS:
            raise Interrupted(signum)  # asked twice: do not wait for the safe point
        if self.signum is None:
            self.signum, self.asked_at = signum, time.perf_counter()

    def _continued(self, signum, frame):
        now = time.perf_counter()
        self.stopped_seconds += now - self.last_check  # the stop began after the last tick
        self.last_check = now

    def __enter__(self):
        self.last_check = time.perf_counter()
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
            self.previous[signal.SIGCONT] = signal.signal(signal.SIGCONT, self._continued)
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def tick(self):
        """Marks a point where the process runs (for running_time), without acting on a stop asked for."""
        self.last_check = time.perf_counter()

    @property
    def asked(self):
        """Whether a stop was asked for (`check` would raise)."""
        return self.signum is not None

    def check(self):
        self.tick()
        if self.asked:
            raise Interrupted(self.signum)

    def running_time(self):
        """Seconds on time.perf_counter's clock, less the time spent stopped so far."""
        return time.perf_counter() - self.stopped_seconds
