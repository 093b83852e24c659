"""Files on disk: written whole or not at all, and their digests."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); move it onto `path` only if the block succeeds."""
    path, tmp_name = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
        os.close(fd)
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; the output is an ordinary file
        yield Path(tmp_name)
        os.replace(tmp_name, path)  # atomic on POSIX: readers see the old file or the new one
    except BaseException as error:
        if tmp_name is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp_name)
        if isinstance(error, OSError) and error.errno is not None:  # a full disk, a read-only directory:
            raise OSError(error.errno, os.strerror(error.errno), str(path)) from error  # named by its destination
        raise


@contextlib.contextmanager
def atomic_write(path: Path | str, mode: str = "wb") -> Iterator[IO]:
    """Yield an open temporary file beside `path`; it replaces `path` only if the block succeeds."""
    with atomic_path(path) as tmp_path, open(tmp_path, mode) as tmp:
        yield tmp
        tmp.flush()
        os.fsync(tmp.fileno())


def file_digest(*paths: Path | str, algorithm: str = "sha256") -> str:
    """The hex digest of one file, or of several read one after another, without loading them whole.

    md5 of one file is the hash DVC records for it in dvc.lock.
    """
    digest = hashlib.new(algorithm)
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
