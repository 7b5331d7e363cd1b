"""How the ``vlprune`` command line fails: one or two lines saying what is wrong and the fix, exit code 2, no
traceback (``vlprune --debug ...`` or ``VLPRUNE_DEBUG=1`` shows it)."""
from __future__ import annotations

import os
import sys
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

# typer vendors its own click: these pass through untouched (usage errors, typer.Exit, Ctrl-C)
_PASS = (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt)

EXIT_USAGE = 2  # what click uses for a bad option; every vlprune error exits with it

# Errors that mean "the input was wrong" and carry their own fix; anything else is also reported in one line,
# but as unexpected, with the hint to rerun with --debug.
USER_ERRORS = (ValueError, TypeError, KeyError, LookupError, FileNotFoundError, FileExistsError, NotADirectoryError,
               IsADirectoryError, PermissionError, NotImplementedError, ImportError, OSError)


class CliError(Exception):
    """A user-facing error: ``message`` says what is wrong, ``fix`` what to do instead."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message + (f"\n{fix}" if fix else ""))


def _debug(ctx: Any) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("debug")) or os.environ.get("VLPRUNE_DEBUG", "") not in ("", "0")


def report(exc: BaseException, console: Console | None = None) -> None:
    """Print ``exc`` as ``error: ...`` (its message; KeyError's quotes dropped) on stderr."""
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    text = str(text).strip() or type(exc).__name__
    if not isinstance(exc, (CliError, *USER_ERRORS)):
        text = f"unexpected {type(exc).__name__}: {text}\nrerun with `vlprune --debug ...` for the traceback"
    console.print(f"[red]error:[/red] {escape(text)}", soft_wrap=True, highlight=False)


class FriendlyGroup(TyperGroup):
    """A command group whose commands' exceptions become one-line errors with exit code 2."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS:
            raise
        except Exception as exc:  # noqa: BLE001 - the point: no traceback unless --debug
            if _debug(ctx):
                raise
            report(exc)
            raise typer.Exit(code=EXIT_USAGE) from None


def fail(message: str, fix: str = "") -> None:
    """Raise a :class:`CliError` (printed as one or two lines, exit code 2)."""
    raise CliError(message, fix)
