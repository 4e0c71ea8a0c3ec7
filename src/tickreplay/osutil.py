"""The three operating-system moves the project makes in many places, written once.

* :func:`atomic_write` — readers (a resuming worker, ``tickreplay ps``, a cache hit) see the old
  file or the whole new one, never a prefix: a SIGKILL between write and rename leaves only a
  ``.tmp-*`` file, which is removed on the next failure path or ignored by readers.
* :func:`kill_group` — every process we spawn leads its own process group
  (``start_new_session=True``), so one ``killpg`` takes its helpers (bwrap's child, weed's
  volume server) along and nothing is orphaned.
* :func:`die_with_parent` — a ``preexec_fn`` so that a SIGKILLed parent (a test runner, a worker
  on a reclaimed spot node) does not leave servers or runners behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def atomic_write(path: Path, content: bytes | str | Callable[[Path], object], *,
                 mode: int | None = None, exclusive: bool = False, fsync: bool = True) -> None:
    """Write ``path`` all at once: to a temporary file beside it, then rename over it.

    Args:
        path: Destination; its directory must exist.
        content: The bytes or text, or ``write(tmp_path)`` that fills the temporary file (for
            writers that want a path: pyarrow, a download).
        mode: File mode of the result (default 0600, from ``mkstemp``).
        exclusive: Create only: raise ``FileExistsError`` if ``path`` exists (``os.link`` is
            atomic create-if-absent, unlike a check followed by a rename).
        fsync: Flush the file to disk before the rename (a crash then leaves the old file or
            the new one, not an empty one).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if callable(content):
            content(tmp)
        else:
            tmp.write_bytes(content.encode() if isinstance(content, str) else content)
        if mode is not None:
            tmp.chmod(mode)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` to the process group led by ``pid``; False if it is already gone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    return True


def die_with_parent() -> None:
    """preexec_fn: SIGKILL this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    The kernel ties this to the spawning *thread*: spawn from a long-lived one.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
