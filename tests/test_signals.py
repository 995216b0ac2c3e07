"""signals.py: a first SIGINT/SIGTERM asks for a stop at the next safe point, a second stops at once; time
spent stopped (SIGSTOP, SIGCONT) is left out of running_time. (tests/test_run_control.py sends them to a real
training process.)"""
import signal

import pytest

import signals
from signals import EXIT_STATUS, Interrupted, StopSignals


@pytest.mark.parametrize("signum", StopSignals.SIGNALS)
def test_a_signal_is_kept_until_the_safe_point_and_a_second_stops_at_once(signum, monkeypatch):
    now = [100.0]
    monkeypatch.setattr(signals.time, "perf_counter", lambda: now[0])
    before = signal.getsignal(signum)
    with StopSignals() as stop:
        stop.check()  # nothing asked yet
        signal.raise_signal(signum)
        with pytest.raises(Interrupted) as asked:
            stop.check()
        assert asked.value.signum == signum and str(asked.value) == signal.Signals(signum).name
        now[0] += 0.5
        signal.raise_signal(signum)  # the same request delivered twice (a job's processes, and the launcher's)
        now[0] += 1
        with pytest.raises(Interrupted):
            signal.raise_signal(signum)  # a second request does not wait for check()
    assert signal.getsignal(signum) is before


def test_exit_status_is_128_plus_the_signal():
    assert EXIT_STATUS == {s: 128 + s for s in StopSignals.SIGNALS}


def test_time_spent_stopped_is_left_out_of_the_running_time(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(signals.time, "perf_counter", lambda: now[0])
    before = signal.getsignal(signal.SIGCONT)
    with StopSignals() as stop:
        start = stop.running_time()
        now[0] += 2  # a batch runs
        stop.check()
        now[0] += 0.5  # part of the next batch, then SIGSTOP for an hour: nothing runs until SIGCONT
        now[0] += 3600
        signal.raise_signal(signal.SIGCONT)
        now[0] += 1  # the rest of the batch
        stop.tick()
        assert stop.running_time() - start == pytest.approx(3)  # within a batch of the 3.5 s that ran
    assert signal.getsignal(signal.SIGCONT) is before
