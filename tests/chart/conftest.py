from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "email-service"


@pytest.fixture(scope="session")
def helm_binary() -> str:
    """The real helm: scripts/install-tools.sh puts it in .tools/bin (make install runs it)."""
    local = REPO / ".tools" / "bin" / "helm"
    found = str(local) if local.is_file() else shutil.which("helm")
    assert found, "helm is missing: run scripts/install-tools.sh (make install does)"
    return found
