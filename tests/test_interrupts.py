"""^C reaches only kvmharness, never its busy children: a child of its own
process group that ignores SIGINT prints no KeyboardInterrupt traceback, and
the parent ends it while unwinding (tests/test_signals.py has the whole run)."""

from __future__ import annotations

import os
import signal
import time

from kvmharness.host.contention import Stealer


def test_a_busy_child_prints_no_traceback_on_ctrl_c(capfd):
    cpu = min(os.sched_getaffinity(0))
    st = Stealer(cpu).start()
    try:
        assert st.proc is not None
        assert os.getpgid(st.proc.pid) != os.getpgid(0), "a terminal's ^C would reach it"
        st.spin(1.0)
        time.sleep(0.2)
        os.kill(st.proc.pid, signal.SIGINT)  # what a ^C to its group would do
        st.wait()  # it finishes its spin and answers: SIGINT did not end it
        assert st.proc.poll() is None
    finally:
        st.close(kill=True)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
