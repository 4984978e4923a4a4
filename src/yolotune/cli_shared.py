"""What every command shares: the error console, exit codes, the usage-error exit, and --trust-model."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import typer
from rich.console import Console

WIDE = 240  # where output is not a terminal (a file, a pipe, CI's log): lines this long, not 80-column tables


def console(stderr: bool = False) -> Console:
    """A console that uses a terminal's width, and lines of WIDE characters where there is no terminal."""
    c = Console(stderr=stderr)
    return c if c.is_terminal else Console(stderr=stderr, width=WIDE)


err = console(stderr=True)
EXIT_OK, EXIT_USAGE, EXIT_FAILURES = 0, 2, 3  # 3: some inputs or streams failed (each has its record)
EXIT_SIGNALS = {"SIGINT": 130, "SIGTERM": 143}  # stopped by a signal, after writing every output (128 + signal)
TRUST_ENV = "YOLOTUNE_TRUST_MODEL"  # read by the .pt loader (models/ultralytics.py)

# the Ray options every command with --ray takes
VIDEO_DECODE = typer.Option("auto", help="Where video is decoded: nvdec (the GPU's NVDEC engines, yolotune\\[nvdec]; "
                            "frames stay in GPU memory), cpu (FFmpeg), auto (NVDEC where the GPU and the extra have it; "
                            "what NVDEC cannot take is decoded on the CPU).")
RAY_ACTORS = typer.Option(None, "--actors", min=1, help="With --ray: actors (default: one per GPU, else one per node).")
GPUS_PER_ACTOR = typer.Option(1.0, "--gpus-per-actor", min=0.01, help="With --ray: GPUs per actor (0.5: two per GPU).")

TRUST_MODEL = typer.Option(False, "--trust-model", help="Load a .pt even if it asks to run code while unpickling "
                                                        "(only for files from a source you trust).", metavar="")


def fail(message: str) -> None:
    """Print a usage or model error and exit 2 (the message as it is: "yolotune[ray]" is not markup)."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}")
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


@contextlib.contextmanager
def stop_on_signals(interrupt: bool = False):
    """SIGINT and SIGTERM set the event (``reason``: the signal's name) instead of killing the work mid-write; a
    second SIGINT leaves at once. ``interrupt``: both raise KeyboardInterrupt at once, for work that ends its own
    steps cleanly on it (optimize keeps what it measured)."""
    stop = threading.Event()
    stop.reason = None  # type: ignore[attr-defined]
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(num, _frame):
        if (stop.is_set() and num == signal.SIGINT) or interrupt:
            stop.reason = stop.reason or signal.Signals(num).name  # type: ignore[attr-defined]
            stop.set()
            raise KeyboardInterrupt
        stop.reason = signal.Signals(num).name  # type: ignore[attr-defined]
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class LineProgress:
    """Progress where there is no terminal: a line on stderr every ``every_s`` seconds (and at the end)."""

    def __init__(self, what: str, every_s: float = 5.0):
        self.what, self.every_s, self.last = what, every_s, time.monotonic()

    def __call__(self, done: int, total: int | None, seconds: float) -> None:
        now = time.monotonic()
        if now - self.last < self.every_s and done != total:
            return
        self.last = now
        of = f" of {total:,}" if total else ""
        err.print(f"{self.what}: {done:,}{of} in {seconds:.0f} s ({done / max(seconds, 1e-9):,.1f}/s)")


@contextlib.contextmanager
def stage_progress(what: str, every_s: float = 10.0):
    """Progress of work that goes in stages (profile, optimize); yields ``say(stage)``. On a terminal a spinner
    with the stage and the time; elsewhere a line on stderr at each stage and every ``every_s`` s while one lasts."""
    t0 = time.monotonic()
    if err.is_terminal:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=err,
                      transient=True) as bar:
            task = bar.add_task(what, total=None)
            yield lambda stage: bar.update(task, description=f"{what}: {stage}")
        return
    current = ["starting"]
    finished = threading.Event()

    def line() -> None:
        err.print(f"{what}: {current[0]} ({time.monotonic() - t0:.0f} s)")

    def beat() -> None:
        while not finished.wait(every_s):
            line()

    def say(stage: str) -> None:
        current[0] = stage
        line()

    beater = threading.Thread(target=beat, name="progress-lines", daemon=True)
    beater.start()
    try:
        yield say
    finally:
        finished.set()
        beater.join(timeout=1.0)  # never hold up an exit (it is a daemon)


class _HelpWithoutValue:
    """--help is a flag: typer shows it as ``--help <bool>`` unless its metavar is empty, as for our own flags."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class HelpGroup(_HelpWithoutValue, typer.core.TyperGroup):
    pass


class HelpCommand(_HelpWithoutValue, typer.core.TyperCommand):
    pass


def plain_help(app: typer.Typer) -> None:
    """Every command and group of ``app`` (sub-apps too) shows --help without a value."""
    def unset(cls, default) -> bool:  # typer.models.DefaultPlaceholder: not given
        return cls is None or cls is default or isinstance(cls, typer.models.DefaultPlaceholder)

    if unset(app.info.cls, typer.core.TyperGroup):
        app.info.cls = HelpGroup
    for command in app.registered_commands:
        if unset(command.cls, typer.core.TyperCommand):
            command.cls = HelpCommand
    for group in app.registered_groups:
        if unset(group.cls, typer.core.TyperGroup):
            group.cls = HelpGroup
        if group.typer_instance is not None:
            plain_help(group.typer_instance)
