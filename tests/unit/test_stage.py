"""pipeline/stage.py: how every stage ends. A stop (Ctrl-C, or SIGTERM from `kill` or a scheduler)
is one line and the shell's exit code for that signal, whenever it lands; a known failure one line
and 1; a full disk one line naming the file."""

import errno
import os
import signal
import sys

import pytest

from pipeline import stage
from pipeline.errors import PipelineError


def ended(main, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exited:
        stage.run("train", main)
    return exited.value.code, capsys.readouterr().err


@pytest.fixture(autouse=True)
def default_handlers():
    """stage.run installs its SIGTERM handler and wraps the output streams: undone after each test."""
    handler, streams = signal.getsignal(signal.SIGTERM), (sys.stdout, sys.stderr)
    yield
    signal.signal(signal.SIGTERM, handler)
    sys.stdout, sys.stderr = streams


def test_sigterm_mid_stage_is_one_line_and_exit_code_143(capsys):
    cleaned = []

    def main():
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # lands while the stage works, as `kill` would
            pytest.fail("SIGTERM did not stop the stage")  # Python runs the handler before this line
        finally:
            cleaned.append(True)

    code, err = ended(main, capsys)
    assert code == 128 + 15 == 143  # what a shell reports for a process ended by SIGTERM
    assert cleaned == [True]
    assert err.splitlines() == ["train: stopped by signal 15 (SIGTERM): nothing was half-written; `dvc repro` runs it again"]


def test_ctrl_c_is_one_line_and_exit_code_130(capsys):
    def main():
        raise KeyboardInterrupt

    code, err = ended(main, capsys)
    assert code == 130 and err.splitlines() == ["train: stopped by Ctrl-C: nothing was half-written; `dvc repro` runs it again"]


def test_a_known_failure_is_one_line_and_exit_code_1(capsys):
    def main():
        raise PipelineError("mlp-256-64 has no trained replicates.json")

    code, _ = ended(main, capsys)
    assert code == "train: mlp-256-64 has no trained replicates.json"  # sys.exit(message): printed, exit status 1


def test_a_full_disk_is_one_line_naming_the_file(capsys):
    def main():
        raise OSError(errno.ENOSPC, "No space left on device", "models/x/seed-0.keras")

    code, _ = ended(main, capsys)
    assert code.startswith("train: cannot write models/x/seed-0.keras: the disk is full.")
