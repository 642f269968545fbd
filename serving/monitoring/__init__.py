"""What the serving plane looks like from Prometheus and Grafana: alerting rules (alerts.yml,
rendered by serving.monitoring.rules) and a dashboard (dashboard.json)."""

from pathlib import Path


def write_or_check(shipped: Path, content: str, module: str, argv: list[str]) -> int:
    """The command line of a generated, committed file: write it, or with --check say (exit 1)
    that the committed copy is not what its source makes now."""
    if "--check" in argv:
        if not shipped.is_file() or shipped.read_text() != content:
            print(f"{shipped} is not what its source makes now: run python -m {module}")
            return 1
        return 0
    shipped.write_text(content)
    print(f"wrote {shipped}")
    return 0
