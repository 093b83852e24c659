"""The page `dvc plots show` fills is committed, so the charts draw offline in any checkout."""

import subprocess

from pipeline.plots_page import PAGE, write_page
from tests.helpers import REPO_ROOT


def test_the_committed_page_is_what_plots_page_writes(tmp_path):
    written = write_page(tmp_path / "offline.html")
    assert written.read_bytes() == (REPO_ROOT / PAGE).read_bytes(), "run `python -m pipeline.plots_page` and commit the page"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", str(PAGE)], cwd=REPO_ROOT, capture_output=True)
    assert tracked.returncode == 0, "the page must be in git, or a fresh checkout's `dvc plots show` fails"
