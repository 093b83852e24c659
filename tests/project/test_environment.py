import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import yaml

from tests.helpers import REPO_ROOT


def pins(lines):
    return sorted(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))


def test_conda_env_pins_the_same_packages_as_the_setup():
    required = pins((REPO_ROOT / "requirements.txt").read_text().splitlines())
    conda = yaml.safe_load((REPO_ROOT / "conda.yaml").read_text())
    (pip_section,) = [entry["pip"] for entry in conda["dependencies"] if isinstance(entry, dict)]
    assert pins(pip_section) == required
    assert all("==" in pin for pin in required)


def test_the_lock_agrees_with_every_direct_pin():
    locked = {
        line.split("==")[0].lower().replace("_", "-"): line.split("==")[1]
        for line in pins((REPO_ROOT / "requirements-lock.txt").read_text().splitlines())
    }
    for pin in pins((REPO_ROOT / "requirements.txt").read_text().splitlines()):
        name, version = pin.split("==")
        name = name.split("[")[0]  # psycopg[binary]: the lock pins the package, extras apart
        assert locked.get(name.lower().replace("_", "-")) == version, pin


def test_make_test_says_in_one_line_which_debian_packages_to_install_when_it_cannot():
    """As a user without root or sudo, on a PATH without the browser: one line, exit 1."""
    with tempfile.TemporaryDirectory() as scratch:  # readable by that user, unlike pytest's tmp_path
        os.chmod(scratch, 0o755)
        result = run_as_nobody(Path(scratch))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()  # chromium is looked up on PATH: missing here
    assert line.startswith("make test: the tests need Debian's ") and "chromium" in line
    assert "run `sudo apt-get install " in line and line.endswith("then `make test` again")


def run_as_nobody(scratch: Path) -> subprocess.CompletedProcess:
    script = scratch / "system-packages.sh"
    shutil.copy2(REPO_ROOT / "tests/system-packages.sh", script)
    bin_dir = scratch / "bin"
    bin_dir.mkdir(mode=0o755)
    for tool in ("bash", "id", "env"):  # what the script needs; no chromium, nginx, sudo, apt-get
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return subprocess.run(
        [shutil.which("setpriv"), "--reuid=65534", "--regid=65534", "--clear-groups", str(script)],
        env={"PATH": str(bin_dir)}, capture_output=True, text=True,
    )


def test_ci_runs_exactly_the_readme_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "```bash\nmake test\n```" in readme
    commands = [line for line in (REPO_ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", " ", "set ", "cd ", "need_apt", "command ", "python3 ", "if ", "fi"))]
    assert commands == ["make test"]
