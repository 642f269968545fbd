"""Names of served versions shared by the fleet and the gateway.

A version's main instance is keyed `NAME/VERSION` (vLLM's served model name). The champion's
second instance is its *baseline*: started beside a candidate, it serves the champion side of
the staging evaluations and then takes as much canary traffic as the candidate, so the two are
compared at the same age and history. One key names it in the fleet and in the gateway.
Between releases against the same champion it may stay running with no traffic (the policy's
`serving.keep_staging_copy`): the next release then starts one server fewer.
"""

from __future__ import annotations

BASELINE_SUFFIX = "+baseline"


def baseline_key(version_ref: str) -> str:
    return version_ref + BASELINE_SUFFIX


def instance_key(version_ref: str, baseline: bool = False) -> str:
    return baseline_key(version_ref) if baseline else version_ref


def stale_staging_copies(instance_keys, model: str, champion_ref: str) -> list[str]:
    """The baseline instances of `model` that are not the champion's: left from releases
    against a champion that has changed since."""
    keep = baseline_key(champion_ref)
    return sorted(k for k in instance_keys if k.startswith(f"{model}/") and k.endswith(BASELINE_SUFFIX) and k != keep)
