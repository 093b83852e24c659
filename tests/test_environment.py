import yaml

from conftest import REPO_ROOT


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
