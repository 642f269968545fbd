"""Names of served versions shared by the fleet and the gateway.

A version's main instance is keyed `NAME/VERSION` (vLLM's served model name). The champion's
second instance is its *baseline*: started beside a candidate, it serves the champion side of
the staging evaluations and then takes as much canary traffic as the candidate, so the two are
compared at the same age and history. One key names it in the fleet and in the gateway.
"""

from __future__ import annotations

BASELINE_SUFFIX = "+baseline"


def baseline_key(version_ref: str) -> str:
    return version_ref + BASELINE_SUFFIX


def instance_key(version_ref: str, baseline: bool = False) -> str:
    return baseline_key(version_ref) if baseline else version_ref
