"""What every task shares: the Fledge home, the registry, the policy, retry settings, and a
logger that writes to the Prefect run log in an operator's words."""

from __future__ import annotations

from typing import Callable

from prefect import get_run_logger
from prefect.exceptions import MissingContextError
from prefect.tasks import exponential_backoff

from fledge.context import open_registry
from fledge.home import FledgeHome
from fledge.policy import ReleasePolicy, load_policy
from registry.errors import RegistryError
from registry.store import ModelRegistry


def home() -> FledgeHome:
    return FledgeHome.from_env().ensure()


def registry() -> ModelRegistry:
    return open_registry(home())


def policy(path: str | None) -> ReleasePolicy:
    return load_policy(path)


def say() -> Callable[[str], None]:
    try:
        logger = get_run_logger()
    except MissingContextError:
        return print
    return logger.info


def _transient(task, task_run, state) -> bool:
    """Retry what can pass (a locked SQLite file, a slow health check), never a refusal that
    will be the same next time (an unknown version, a damaged artifact)."""
    from fledge.plane import PlaneNotRunning
    from fledge.policy import PolicyError
    from fledge.releases import ReleaseInputError

    try:
        state.result()
    except (RegistryError, ReleaseInputError, PlaneNotRunning, PolicyError):
        return False
    except Exception:
        return True
    return False


# For steps that touch MLflow or a server's health: a transient failure is retried with backoff.
TRANSIENT = dict(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=2), retry_jitter_factor=0.5,
                 retry_condition_fn=_transient)
