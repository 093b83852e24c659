"""The page `dvc plots show` fills is committed, so the charts draw offline in any checkout."""

import subprocess
import sys
from pathlib import Path

from pipeline.plots_page import PAGE, write_page

from conftest import REPO_ROOT, copy_of_repository, user_env


def test_the_committed_page_is_what_plots_page_writes(tmp_path):
    written = write_page(tmp_path / "offline.html")
    assert written.read_bytes() == (REPO_ROOT / PAGE).read_bytes(), "run `python -m pipeline.plots_page` and commit the page"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(PAGE)], cwd=REPO_ROOT, capture_output=True)
    assert tracked.returncode == 0, "the page must be in git, or a fresh checkout's `dvc plots show` fails"


def test_make_plots_writes_a_missing_page_again(tmp_path):
    repo = copy_of_repository(tmp_path)
    (repo / PAGE).unlink()
    (repo / ".venv").symlink_to(Path(sys.executable).parent.parent)  # this environment, not built again (-o)
    result = subprocess.run(["make", "-o", ".venv/installed", "plots"], cwd=repo, env=user_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (repo / PAGE).read_bytes() == (REPO_ROOT / PAGE).read_bytes()
    assert "{plot_divs}" not in (repo / "dvc_plots/index.html").read_text()
