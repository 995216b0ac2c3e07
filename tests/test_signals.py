"""signals.py: a first SIGINT/SIGTERM asks for a stop at the next safe point, a second stops at once.
(tests/test_run_control.py sends them to a real training process.)"""
import signal

import pytest

from signals import EXIT_STATUS, Interrupted, StopSignals


@pytest.mark.parametrize("signum", StopSignals.SIGNALS)
def test_a_signal_is_kept_until_the_safe_point_and_a_second_stops_at_once(signum):
    before = signal.getsignal(signum)
    with StopSignals() as stop:
        stop.check()  # nothing asked yet
        signal.raise_signal(signum)
        with pytest.raises(Interrupted) as asked:
            stop.check()
        assert asked.value.signum == signum and str(asked.value) == signal.Signals(signum).name
        with pytest.raises(Interrupted):
            signal.raise_signal(signum)  # the second one does not wait for check()
    assert signal.getsignal(signum) is before


def test_exit_status_is_128_plus_the_signal():
    assert EXIT_STATUS == {s: 128 + s for s in StopSignals.SIGNALS}
