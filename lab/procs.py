"""Process bookkeeping shared by the lab's controllers (labctl.py, mailhost.py)."""
from __future__ import annotations

import os
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """True while pid runs; a zombie counts as gone (and is reaped when it is our child)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pid: int, timeout: float) -> bool:
    """Waits until pid is gone; False when it still runs after timeout seconds."""
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True
