"""How every stage runs as a command: `python -m pipeline.STAGE` ends in `run(STAGE, main)`."""

from __future__ import annotations

import errno
import signal
import sys
from typing import Callable, TextIO

from pipeline.errors import PipelineError, without_credentials

# A write that failed for want of room or of permission: said in one line, not a traceback.
WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class WithoutCredentials:
    """A text stream that leaves every URL's user:password@ out of what passes through it."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(without_credentials(text))
        return len(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def stop_on_sigterm() -> None:
    """Make SIGTERM (`kill`, a stopped job) behave as Ctrl-C: cleanup code runs, then the stage exits.

    Python's default for SIGTERM is to die on the spot, skipping every `finally`.
    """

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum} ({signal.Signals(signum).name})")

    signal.signal(signal.SIGTERM, interrupt)


def write_failure(error: BaseException) -> OSError | None:
    """The OSError of a failed write behind `error` (MLflow and Keras wrap them), if that is what it is."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in WRITE_ERRORS:
            return error
        if "database or disk is full" in str(error):  # sqlite's words for ENOSPC
            return OSError(errno.ENOSPC, "database or disk is full")
        error = error.__cause__ or error.__context__
    return None


def run(stage: str, main: Callable[[], object]) -> None:
    """Run a stage's main: SIGTERM as Ctrl-C, either one line and the signal's exit code (128 + its
    number); a known failure printed as `STAGE: message`, exit 1.

    Everything the stage prints, tracebacks included, passes through WithoutCredentials: a
    tracking URI's user:password@ never reaches a log.
    """
    sys.stdout, sys.stderr = WithoutCredentials(sys.stdout), WithoutCredentials(sys.stderr)
    stop_on_sigterm()
    try:
        main()
    except KeyboardInterrupt as error:  # Ctrl-C, or SIGTERM: the `finally`s have run; one line, no traceback
        why = str(error) or "stopped by Ctrl-C"
        print(f"{stage}: {why}: nothing was half-written; `dvc repro` runs it again", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if "SIGTERM" in why else signal.SIGINT))  # the shell's code for the signal
    except PipelineError as error:
        sys.exit(f"{stage}: {without_credentials(str(error))}")
    except Exception as error:
        failure = write_failure(error)
        if failure is None:
            raise
        where = f" {failure.filename}" if failure.filename else ""
        sys.exit(
            f"{stage}: cannot write{where}: {WRITE_ERRORS[failure.errno]}. Nothing was half-written (outputs are "
            "replaced whole or not at all); make room or fix the permissions, then rerun `dvc repro`."
        )
