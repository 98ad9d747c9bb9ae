"""Whose half-written file is this? Names for temporary files that say which
process on which host writes them.

Several nodes may share a spool (``storage.spool_dir`` on a mount every host
sees). At start-up a node removes what a crash left half-written; with a shared
spool it must not remove what another node is writing at that moment. A
temporary name therefore carries a tag of its writer, and only the files of a
writer that is gone (this host, a process no longer alive), or of a release
that wrote no tag, are removed.
"""

from __future__ import annotations

import os
import re
import socket

_TAG = re.compile(r"w([A-Za-z0-9_]+)~(\d+)")


def writer_tag() -> str:
    """This process's tag: ``w<host>~<pid>`` (letters, digits, ``_``, ``~``)."""
    host = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "_"
    return f"w{host}~{os.getpid()}"


def left_by_a_gone_writer(name: str) -> bool:
    """Whether a temporary file or folder called ``name`` may be removed: its
    writer was a process of this host that no longer runs, or its name carries
    no tag (written by an earlier release, which shared no spool)."""
    found = _TAG.search(name)
    if found is None:
        return True
    host, pid = found.group(1), int(found.group(2))
    if host != writer_tag().split("~", 1)[0][1:]:
        return False  # another host's: its own start-up cleans it
    if pid == os.getpid():
        return True  # this process has only just started: nothing of its own yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    return False
