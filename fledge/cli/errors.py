"""Turn expected failures into one-paragraph messages and a non-zero exit, never a traceback."""

from __future__ import annotations

import functools
import sys

import typer
from rich.console import Console

err_console = Console(stderr=True, soft_wrap=True)

EXIT_ERROR = 1


class UsageError(Exception):
    """Bad input the user can fix; the message says how."""


def _expected_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from fledge.plane import PlaneNotRunning
    from fledge.policy import PolicyError
    from fledge.releases import ReleaseInputError
    from registry.errors import RegistryError
    from serving.errors import LaunchError
    from serving.quantize import SchemeNotServable

    return (UsageError, RegistryError, LaunchError, ValidationError, FileNotFoundError, PolicyError, SchemeNotServable,
            PlaneNotRunning, ReleaseInputError)


def friendly(command=None, *, exit_code: int = EXIT_ERROR):
    """Decorator for Typer commands: expected errors print as one paragraph and exit non-zero
    (1 unless the command's own exit codes reserve another meaning for 1)."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            try:
                return function(*args, **kwargs)
            except _expected_errors() as error:
                err_console.print(f"[bold red]error:[/] {error}", highlight=False)
                raise typer.Exit(exit_code) from None
            except KeyboardInterrupt:
                err_console.print("interrupted")
                sys.exit(130)

        return wrapper

    return decorate(command) if command is not None else decorate
