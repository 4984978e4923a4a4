"""What every command shares: the error console, exit codes, the usage-error exit, and --trust-model."""

from __future__ import annotations

import os

import typer
from rich.console import Console

err = Console(stderr=True)
EXIT_OK, EXIT_USAGE, EXIT_FAILURES = 0, 2, 3  # 3: some inputs or streams failed (each has its record)
TRUST_ENV = "YOLOTUNE_TRUST_MODEL"  # read by the .pt loader (models/ultralytics.py)

TRUST_MODEL = typer.Option(False, "--trust-model", help="Load a .pt even if it asks to run code while unpickling "
                                                        "(only for files from a source you trust).", metavar="")


def fail(message: str) -> None:
    """Print a usage or model error and exit 2."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(EXIT_USAGE)


def output_folder(out, option: str = "--out") -> None:
    """A folder option that names an existing file, or a folder that cannot be made: a usage error, in one line."""
    from pathlib import Path

    out = Path(out)
    blocked = next((p for p in [out, *out.parents] if p.exists() and not p.is_dir()), None)
    if blocked is not None:
        fail(f"{option} {out}: {blocked} is a file, not a folder; give a folder (it is made if missing)")


def output_file(out, option: str = "--out") -> None:
    """A file option whose folder is a file, or which names a folder: a usage error, in one line."""
    from pathlib import Path

    out = Path(out)
    if out.is_dir():
        fail(f"{option} {out} is a folder; give a file name")
    output_folder(out.parent, option)


def trust_models(trust: bool) -> None:
    """--trust-model: .pt files load without the safety check, in this process and those it starts."""
    if trust:
        os.environ[TRUST_ENV] = "1"
