"""The round kit's Ctrl-C handling: held while children are stopped, then delivered."""

from __future__ import annotations

import os
import signal

import pytest

from experiment.round_kit import uninterruptible


def test_a_ctrl_c_while_children_stop_is_held_then_delivered_not_dropped() -> None:
    stopped = False
    with pytest.raises(KeyboardInterrupt), uninterruptible():
        os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, mid-stop
        stopped = True  # the stopping goes on to the end
    assert stopped
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
