"""`make plots` writes a deleted `dvc plots show` page again (the committed one: tests/unit/test_plots_page.py)."""

import subprocess
import sys
from pathlib import Path

from pipeline.plots_page import PAGE

from tests.helpers import REPO_ROOT, copy_of_repository, user_env


def test_make_plots_writes_a_missing_page_again(tmp_path):
    repo = copy_of_repository(tmp_path)
    (repo / PAGE).unlink()
    (repo / ".venv").symlink_to(Path(sys.executable).parent.parent)  # this environment, not built again (-o)
    result = subprocess.run(["make", "-o", ".venv/installed", "plots"], cwd=repo, env=user_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (repo / PAGE).read_bytes() == (REPO_ROOT / PAGE).read_bytes()
    assert "{plot_divs}" not in (repo / "dvc_plots/index.html").read_text()
