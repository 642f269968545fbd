"""Turn expected failures into one-paragraph messages and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import sys

import typer
from pydantic import ValidationError
from rich.console import Console

from fledge.core.errors import FledgeError

err_console = Console(stderr=True, soft_wrap=True)

EXIT_ERROR = 1


class UsageError(FledgeError):
    """Bad input on the command line; the message says how to fix it."""


def friendly(command=None, *, exit_code: int = EXIT_ERROR):
    """Decorator for Typer commands: every FledgeError (and a typed input that does not
    validate) prints as one paragraph and exits non-zero (1 unless the command's own exit
    codes reserve another meaning for 1)."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except (FledgeError, ValidationError) as error:
                err_console.print(f"[bold red]error:[/] {error}", highlight=False)
                raise typer.Exit(exit_code) from None
            except KeyboardInterrupt:
                err_console.print("interrupted")
                sys.exit(130)

        return wrapper

    return decorate(command) if command is not None else decorate
