"""Write files so that an interrupted stage never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); move it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    try:
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the output is an ordinary file
        yield Path(tmp_name)
        os.replace(tmp_name, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb") -> Iterator[IO]:
    """Yield an open temporary file beside `path`; it replaces `path` only if the block succeeds."""
    with atomic_path(path) as tmp_path, open(tmp_path, mode) as tmp:
        yield tmp
        tmp.flush()
        os.fsync(tmp.fileno())


def stop_on_sigterm() -> None:
    """Make SIGTERM (`kill`, a stopped job) behave as Ctrl-C: cleanup code runs, then the stage exits.

    Python's default for SIGTERM is to die on the spot, skipping every `finally`.
    """

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
