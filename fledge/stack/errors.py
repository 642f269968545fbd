"""The stack's one error type: a FledgeError whose message names the component, what went
wrong, the log file to read and the fix."""

from __future__ import annotations

from fledge.core.errors import FledgeError


class StackError(FledgeError):
    """The team stack could not be brought up, checked or stopped."""
