"""The README's configuration table, generated from the settings' declarations.

``python -m mailcore.settings_table`` prints it; ``--write README.md`` replaces the table between
the markers; ``--check README.md`` exits 1 when the README and the code disagree (a test runs it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import GROUPS
from .envfields import Var, variables

BEGIN = ("<!-- settings-table: generated from mailcore/config.py by "
         "`python -m mailcore.settings_table --write README.md`; do not edit by hand -->")
END = "<!-- settings-table: end -->"

#: Variables libraries read themselves, documented beside ours: (name, default, meaning).
LIBRARY_VARIABLES = (
    ("OTEL_TRACES_SAMPLER", "parentbased_always_on", "Tracing: the sampler, read by the "
     "OpenTelemetry SDK (with `OTEL_TRACES_SAMPLER_ARG`; other `OTEL_EXPORTER_OTLP_*` too)."),
)


def _default(var: Var) -> str:
    if var.shown is not None:
        return var.shown
    return "—" if not var.default else f"`{var.default}`"


def _row(name: str, default: str, meaning: str) -> str:
    return f"| `{name}` | {default} | {meaning} |"


def markdown() -> str:
    """The table: one section per settings group, one row per variable."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, group in GROUPS.items():
        summary = (group.__doc__ or "").strip().splitlines()[0].replace("``", "`")
        lines.append(f"| **{name}** | | *{summary}* |")
        for _, var in variables(group):
            names = (var.unless,) if isinstance(var.unless, str) else var.unless or ()
            unless = (" Not read when " + " or ".join(f"`{n}`" for n in names) + " is set."
                      if names else "")
            secret = " Secret: may come from a file." if var.secret else ""
            lines.append(_row(var.name, _default(var), var.doc + unless + secret))
    lines += [_row(name, f"`{default}`", meaning) for name, default, meaning in LIBRARY_VARIABLES]
    return "\n".join(lines) + "\n"


def replace_table(document: str) -> str:
    """``document`` with the text between the markers replaced by the current table."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise ValueError("the settings-table markers are missing")
    return document[:start + len(BEGIN)] + "\n" + markdown() + document[end:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailcore.settings_table",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", type=Path, metavar="README", help="rewrite the table there")
    action.add_argument("--check", type=Path, metavar="README",
                        help="exit 1 when the table there is not the generated one")
    args = parser.parse_args(argv)
    if args.write:
        args.write.write_text(replace_table(args.write.read_text()))
    elif args.check:
        current = args.check.read_text()
        if replace_table(current) != current:
            print(f"{args.check}: the configuration table differs from mailcore/config.py; run "
                  f"python -m mailcore.settings_table --write {args.check}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
