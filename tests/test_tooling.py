"""The developer tooling agrees with itself: the pre-commit hooks run what `make lint` runs, and
the layer contracts that `make lint` checks are declared."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def lint_commands() -> list[str]:
    """The commands of the Makefile's lint target, without $(BIN)/ and trailing comments."""
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    commands = [line.strip().split("  #")[0].strip() for line in recipe if line.startswith("\t")]
    return [command.replace("$(BIN)/", "") for command in commands]


def test_pre_commit_runs_what_make_lint_runs() -> None:
    config = yaml.safe_load((REPO / ".pre-commit-config.yaml").read_text())
    [repo] = config["repos"]
    assert repo["repo"] == "local"  # nothing fetched from the network
    entries = []
    for hook in repo["hooks"]:
        assert hook["language"] == "system", hook["id"]
        assert hook["entry"].startswith(".venv/bin/"), hook["id"]
        entries.append(hook["entry"].removeprefix(".venv/bin/"))
    commands = lint_commands()
    assert len(commands) >= 4, commands
    # `ruff check .` runs on the staged files under pre-commit; the rest take no file names.
    assert sorted(re.sub(r"^ruff check \.$", "ruff check", c) for c in commands) == sorted(
        entries)


def test_make_lint_checks_the_layer_contracts() -> None:
    assert "lint-imports" in lint_commands()
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"][
        "contracts"]
    by_id = {contract["id"]: contract for contract in contracts}
    assert by_id["core"]["source_modules"] == ["mailcore"]
    assert {"service", "workers", "email_service"} <= set(by_id["core"]["forbidden_modules"])
    assert by_id["adapters"]["type"] == "independence"
    assert set(by_id["adapters"]["modules"]) == {"service", "workers", "bounces"}
    assert by_id["tests-not-bench"]["forbidden_modules"] == ["bench"]
