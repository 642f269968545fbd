"""What every task shares: the workspace (Fledge home and registry), the retry policy, and a
logger that writes to the Prefect run log in an operator's words."""

from __future__ import annotations

from typing import Callable

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from prefect.tasks import exponential_backoff

from fledge.core.errors import FledgeError
from fledge.core.home import FledgeHome
from fledge.services.context import Workspace


def workspace() -> Workspace:
    """Tasks find the home through FLEDGE_HOME, as a worker on another host would."""
    return Workspace.open(FledgeHome.from_env())


def preempted(model: str) -> str | None:
    """Why this context's lease on `model` is gone (a rollback took it, an operator broke it),
    or None while it holds it (or holds none). What a preempted release must not do: put back."""
    from fledge.services.leases import held_lease

    held = held_lease(model)
    return None if held is None or held.still_held() else held.lost


def say() -> Callable[[str], None]:
    try:
        logger = get_run_logger()
    except MissingContextError:
        return print
    return logger.info


def retryable(error: BaseException) -> bool:
    """Fledge's own errors say whether trying again can help (FledgeError.retryable); anything
    else (a locked SQLite file, a connection reset) is taken as transient."""
    return error.retryable if isinstance(error, FledgeError) else isinstance(error, Exception)


def _retry_condition(task, task_run, state) -> bool:
    try:
        state.result()
    except BaseException as error:  # noqa: BLE001 - the state's exception, classified here
        return retryable(error)
    return False


# For steps that touch MLflow or a server's health: a transient failure is retried with backoff.
TRANSIENT = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5,
                 retry_condition_fn=_retry_condition)
