"""Process lifetimes: a child process that must not outlive its parent."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

__all__ = ["end_with_parent"]

LOGGER = logging.getLogger(__name__)

#: ``prctl`` option: the signal this process gets when its parent ends.
PR_SET_PDEATHSIG = 1


def end_with_parent() -> bool:
    """Have the kernel send this process SIGKILL when its parent ends (Linux's
    ``PR_SET_PDEATHSIG``; "the parent" is the thread that started this process).

    Returns
    -------
    bool
        Whether it took effect; ``False`` (with a warning) where ``prctl`` is
        missing or refused it. The caller checks :func:`os.getppid` itself
        after the call, for a parent that ended before it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            LOGGER.warning("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
            return False
    except (OSError, AttributeError) as exc:
        LOGGER.warning("prctl(PR_SET_PDEATHSIG) is not available: %s", exc)
        return False
    return True
