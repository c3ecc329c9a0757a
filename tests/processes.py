"""Killing a subprocess at a chosen moment, for the tests of what a SIGKILL leaves behind."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def kill_when(cmd: list[str], cwd: Path, ready: Callable[[], bool], poll_s: float) -> bool:
    """Run ``cmd`` and SIGKILL it as soon as ``ready()`` is true; False if it finished first."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return True
            time.sleep(poll_s)
        return False
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
