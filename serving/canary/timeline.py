"""A rollout's history as a table and a plot, for the Prefect artifacts and the MLflow run."""

from __future__ import annotations

import io

from serving.canary.state_machine import RolloutState


def timeline_rows(state: RolloutState) -> list[dict[str, str]]:
    start = state.history[0].at if state.history else 0.0
    return [
        {
            "t (s)": f"{entry.at - start:.1f}",
            "action": entry.action.value,
            "canary %": str(entry.canary_weight),
            "analysis": entry.analysis.value if entry.analysis else "-",
            "reason": entry.reason,
        }
        for entry in state.history
    ]


def timeline_markdown(state: RolloutState) -> str:
    lines = [
        f"### Canary of {state.canary} against {state.stable}: {state.phase.value}",
        "",
        *([f"Judged against a baseline instance of {state.stable} started with the canary "
           f"(`{state.baseline}`), which takes as much traffic as the canary.", ""] if state.baseline else []),
        "| t (s) | canary % | | action | analysis | reason |",
        "|---:|---:|---|---|---|---|",
    ]
    for row in timeline_rows(state):
        bar = "█" * (int(row["canary %"]) // 5) or "·"
        lines.append(f"| {row['t (s)']} | {row['canary %']} | {bar} | {row['action']} | {row['analysis']} | "
                     f"{row['reason'].replace('|', '/')} |")
    if state.failed_checks:
        lines += ["", "**Failed checks**", ""] + [f"- {check}" for check in state.failed_checks]
    return "\n".join(lines)


def timeline_png(state: RolloutState) -> bytes:
    """Canary weight over time as a step plot, rollbacks and failures marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = state.history[0].at if state.history else 0.0
    times = [e.at - start for e in state.history]
    weights = [e.canary_weight for e in state.history]
    figure, axes = plt.subplots(figsize=(7, 3))
    if times:
        axes.step(times + [times[-1] + 1], weights + [weights[-1]], where="post", color="tab:blue")
        for entry, t in zip(state.history, times):
            if entry.action.value == "rollback":
                axes.axvline(t, color="tab:red", linestyle="--", label="rollback")
            elif entry.analysis is not None and entry.analysis.value != "pass":
                axes.plot(t, entry.canary_weight, "o", color="tab:orange")
    axes.set_ylim(-5, 105)
    axes.set_xlabel("seconds since the canary started")
    axes.set_ylabel("canary traffic %")
    axes.set_title(f"{state.canary} vs {state.stable}: {state.phase.value}")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()
