"""Errors of the serving layer."""

from fledge.core.errors import FledgeError


class LaunchError(FledgeError):
    """A vLLM server did not come up (or could not be started); the message carries its log tail.
    Retryable: a start that timed out on a loaded machine can pass the next time."""

    retryable = True


class RolloutConflict(FledgeError):
    """A rollout is in progress where a new one was asked for, or none where one was expected;
    the message names it and what to do."""
