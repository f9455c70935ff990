"""`pip install .` (not editable) into a fresh virtualenv: the installed package finds its configuration.

The Kubernetes manifests run an image built this way, where the source tree is not there: the credit-control
configuration must come with the package (package data), and `$ARLEDGER_CONFIG` must still override it.

The package is installed with `--no-deps` from a copy of the tree (so nothing of the working tree leaks in);
its dependencies come from this test run's own environment through a `.pth` file, so the test downloads only
what pip's build isolation needs (setuptools), as `make venv` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.support import CONFIG_FILE, REPO_ROOT

pytestmark = pytest.mark.slow

PACKAGE_FILES = ("pyproject.toml", "README.md")
PACKAGES = ("arledger", "ledger", "projections", "consumers")
INSTALL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtualenv with arledger installed by `pip install --no-deps SOURCE`."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in PACKAGE_FILES:
        shutil.copy2(REPO_ROOT / name, source / name)
    for name in PACKAGES:
        shutil.copytree(REPO_ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=INSTALL_TIMEOUT_S)
    python = venv / "bin" / "python"
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(source)],
                            capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = Path(subprocess.run([str(python), "-c", purelib], capture_output=True, text=True,
                                        check=True).stdout.strip())
    # The dependencies (kafka-python, duckdb, ...) from this environment, after the installed package on sys.path.
    (site_packages / "zz_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    shutil.rmtree(source)  # nothing may be read from the copy of the tree once installed
    return python


def run_python(python: Path, code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -I -c CODE` outside any source tree (isolated: no cwd, no PYTHONPATH on sys.path)."""
    clean = {key: value for key, value in os.environ.items() if not key.startswith(("ARLEDGER_", "PYTHON"))}
    return subprocess.run([str(python), "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**clean, "ARLEDGER_HOME": str(tmp_path / "home"), **env}, timeout=120)


LOAD = """
import consumers, consumers.alerts as alerts
from arledger.settings import Settings
from consumers.runner import ledger_policy
config = alerts.load_config()
print(consumers.__file__)
print(alerts.config_path())
print(config.ladder.steps[0].action, config.ladder.steps[0].offset_days)
print(ledger_policy(Settings.from_env()).grading == config.grading)
"""


def test_an_installed_package_loads_the_configuration_shipped_with_it(installed: Path, tmp_path: Path) -> None:
    result = run_python(installed, LOAD, tmp_path)
    assert result.returncode == 0, result.stderr
    package, config, first_step, same_grading = result.stdout.splitlines()
    site_packages = installed.parent.parent
    assert Path(package).is_relative_to(site_packages)  # the installed copy, not the source tree
    assert Path(config).is_relative_to(site_packages) and Path(config).read_text() == CONFIG_FILE.read_text()
    assert first_step == "reminder -3"
    assert same_grading == "True"  # what `arledger run` gives the ledger


def test_arledger_config_overrides_the_shipped_configuration(installed: Path, tmp_path: Path) -> None:
    override = tmp_path / "arledger.toml"
    override.write_text(CONFIG_FILE.read_text().replace("offset_days = -3", "offset_days = -5", 1))
    result = run_python(installed, LOAD, tmp_path, ARLEDGER_CONFIG=str(override))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:3] == [str(override), "reminder -5"]


def test_an_unreadable_configuration_is_an_error_for_the_caller_not_an_exit(installed: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    code = """
import consumers.alerts as alerts
from ledger.policy import ConfigError
try:
    alerts.load_config()
except ConfigError as error:
    print("ConfigError:", error)
"""
    result = run_python(installed, code, tmp_path, ARLEDGER_CONFIG=str(missing))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"ConfigError: cannot read the credit-control config {missing}")


def test_the_installed_command_runs(installed: Path, tmp_path: Path) -> None:
    result = subprocess.run([str(installed.parent / "arledger"), "run", "--help"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: arledger run" in result.stdout
