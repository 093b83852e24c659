"""How every stage runs as a command: `python -m pipeline.STAGE` ends in `run(STAGE, main)`."""

from __future__ import annotations

import signal
import sys
from typing import Callable

from pipeline.errors import PipelineError


def stop_on_sigterm() -> None:
    """Make SIGTERM (`kill`, a stopped job) behave as Ctrl-C: cleanup code runs, then the stage exits.

    Python's default for SIGTERM is to die on the spot, skipping every `finally`.
    """

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def run(stage: str, main: Callable[[], object]) -> None:
    """Run a stage's main: SIGTERM as Ctrl-C; a known failure printed as `STAGE: message`, exit 1."""
    stop_on_sigterm()
    try:
        main()
    except PipelineError as error:
        sys.exit(f"{stage}: {error}")
