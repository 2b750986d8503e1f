"""Generate docs/cli.md from the argument parsers, so the CLI reference cannot drift from the code.

    .venv/bin/python scripts/gen_cli_doc.py > docs/cli.md

tests/unit/test_cli_doc.py fails when the committed file differs from what this prints.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lineguard.cli import COMMANDS, SUMMARIES

HEADER = """# `lineguard` command reference

Generated from the argument parsers by `scripts/gen_cli_doc.py`; do not edit by hand. One console
command with subcommands; training-side commands (`train`, `calibrate`, `augment-preview`, ...) need
the `train` extra (torch). Exit codes: 0 success, 1 a LineGuard error (the message says what to do),
2 usage error; commands document any others.
"""


def main() -> int:
    os.environ["COLUMNS"] = "100"  # stable wrapping
    out = [HEADER]
    for name, module_path in COMMANDS.items():
        module = importlib.import_module(module_path)
        parser = argparse.ArgumentParser(prog=f"lineguard {name}", description=SUMMARIES[name])
        module.add_arguments(parser)
        out.append(f"\n## `lineguard {name}`\n\n{SUMMARIES[name]}.\n\n```text\n{parser.format_help().rstrip()}\n```")
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
