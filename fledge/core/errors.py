"""One base for every error Fledge raises on purpose.

`str(error)` is the one paragraph a user sees: the problem and the fix. `retryable` says
whether trying the same thing again can succeed (a locked database, a server still starting);
the CLI renders every FledgeError without a traceback, and the tasks' retry policy retries
exactly the retryable ones, so the two lists can never disagree.
"""

from __future__ import annotations


class FledgeError(Exception):
    """An expected failure with a message that names the fix. Not retryable unless a subclass says so."""

    retryable: bool = False


class TransientError(FledgeError):
    """Something outside Fledge was briefly unavailable; the same call may pass later."""

    retryable = True
