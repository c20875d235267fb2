"""`make dev` needs only Python and the service's runtime (a virtualenv and redis-server);
the tools only the tests use (helm and kubectl from npm, buildah, debootstrap, the test extras)
come with `make test`. Run for real, with make and the scripts, on a PATH without those tools."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .support import REPO

#: What the dev path must never need: the test tools, their installers and package managers.
TEST_ONLY = frozenset({"npm", "npx", "node", "helm", "kubectl", "buildah", "debootstrap",
                       "apt-get", "apt", "sudo", "docker", "kind", "shellcheck", "pip", "pip3"})

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def restricted_path(directory: Path, *, without: frozenset[str]) -> str:
    """A PATH of one folder linking every executable of the current PATH except `without`."""
    directory.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            link = directory / entry.name
            if entry.name in without or link.exists() or link.is_symlink():
                continue
            if entry.is_file() and os.access(entry.path, os.X_OK):
                link.symlink_to(entry.path)
    return str(directory)


def make(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def bare_venv(path: Path) -> Path:
    """A virtualenv whose runtime install is recorded as current, so bootstrap skips pip (the
    one step that needs the network) and everything else it does runs for real."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                   timeout=60)
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    (path / ".bootstrap-runtime").write_text(digest + "\n")
    return path


def test_make_dev_runs_only_the_runtime_bootstrap(tmp_path: Path) -> None:
    planned = make("-n", "-B", "dev", f"VENV={tmp_path / 'venv'}")
    assert planned.returncode == 0, planned.stderr
    assert "scripts/bootstrap.sh" in planned.stdout
    assert "email-service dev" in planned.stdout
    for tool in ("install-test-tools", "install-tools", "[test]", "npm", "helm", "buildah"):
        assert tool not in planned.stdout, planned.stdout
    # The bootstrap itself names no test tool either (a later edit could call one from there).
    script = (REPO / "scripts" / "bootstrap.sh").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    for tool in ("install-tools", "install-test-tools", ".[test]", "npm", "helm", "kubectl",
                 "buildah", "debootstrap", "chromium", "playwright"):
        assert tool not in code, tool


def test_make_install_succeeds_without_npm_helm_kubectl_or_apt(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make install installs it)")
    path = restricted_path(tmp_path / "bin", without=TEST_ONLY)
    env = {**os.environ, "PATH": path, "TOOLS": str(tmp_path / "tools")}
    venv = bare_venv(tmp_path / "venv")

    result = make("install", f"VENV={venv}", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (venv / ".installed").exists()
    assert "installing" not in result.stderr, result.stderr  # nothing fetched
    assert not (tmp_path / "tools").exists()

    # The PATH really lacks npm: the helm/kubectl installer fails on it, so the pass above means
    # the dev path never called that installer.
    tools = subprocess.run([str(REPO / "scripts" / "install-tools.sh")], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert tools.returncode != 0
    assert "npm is needed" in tools.stderr


def test_bootstrap_names_redis_server_when_it_cannot_install_it(tmp_path: Path) -> None:
    path = restricted_path(tmp_path / "bin", without=TEST_ONLY | {"redis-server"})
    venv = bare_venv(tmp_path / "venv")
    result = subprocess.run([str(REPO / "scripts" / "bootstrap.sh")],
                            env={**os.environ, "PATH": path, "VENV": str(venv)},
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert "redis-server is needed" in result.stderr


def test_make_test_installs_the_test_tools_first() -> None:
    planned = make("-n", "-B", "test")
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    installer = next(i for i, line in enumerate(lines) if "scripts/install-test-tools.sh" in line)
    runner = next(i for i, line in enumerate(lines) if line.endswith("/pytest"))
    assert installer < runner
    script = (REPO / "scripts" / "install-test-tools.sh").read_text()
    for step in ('pip install -q -e ".[test]"', "buildah", "debootstrap", "chromium",
                 "scripts/install-tools.sh"):
        assert step in script, step
