"""Posting a release's end to the policy's notification URLs, through apprise (the library
Prefect's own notification blocks use, so any URL a Prefect user knows works here).

A notification is best effort by design: a receiver that is down or slow is reported back to
the caller, never allowed to fail or hold the release whose outcome it carries.
"""

from __future__ import annotations

from dataclasses import dataclass

from fledge.core.policy import NotificationPolicy


@dataclass(frozen=True)
class Notice:
    model: str
    outcome: str  # promoted | rejected | rolled_back | failed | preempted
    title: str
    body: str


def should_post(policy: NotificationPolicy, outcome: str, manual: bool = False) -> bool:
    return bool(policy.urls) and (manual or outcome in policy.outcomes)


def post(policy: NotificationPolicy, notice: Notice) -> list[str]:
    """Post to every URL; returns the problems (URL and why), empty when every post went out."""
    import apprise

    problems = []
    kind = apprise.NotifyType.SUCCESS if notice.outcome == "promoted" else apprise.NotifyType.WARNING
    for url in policy.urls:
        sender = apprise.Apprise(asset=apprise.AppriseAsset(async_mode=False))
        if not sender.add(url):
            problems.append(f"{url.split('://', 1)[0]}://...: not an apprise URL apprise can use")
            continue
        for plugin in sender:
            plugin.socket_connect_timeout = plugin.socket_read_timeout = policy.timeout_seconds
        if not sender.notify(title=notice.title, body=notice.body, notify_type=kind):
            problems.append(f"{url.split('://', 1)[0]}://...: the receiver did not accept the post")
    return problems
