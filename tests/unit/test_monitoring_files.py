"""The shipped alert rules and dashboard: generated from their sources, at the policy's limits,
valid for promtool, and alerting as their unit tests (alerts_test.yml) say. The live firing
and every panel's query against a real Prometheus are in tests/stack/test_monitoring.py."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from fledge.core.policy import load_policy
from serving.monitoring import dashboard, rules

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Debian's prometheus: "
                                                             "scripts/stack-setup.sh installs it")


def test_the_shipped_rules_are_the_template_at_production_values():
    assert rules.SHIPPED.read_text() == rules.render(), "run python -m serving.monitoring.rules"


def test_the_production_thresholds_are_the_default_policys():
    assert rules.AlertSettings.from_policy(load_policy()) == rules.AlertSettings()


def test_an_unknown_template_name_is_an_error_not_left_in_the_rules(tmp_path, monkeypatch):
    template = tmp_path / "alerts.template.yml"
    template.write_text("expr: x > @{no_such_setting}\n")
    monkeypatch.setattr(rules, "TEMPLATE", template)
    with pytest.raises(KeyError, match="no_such_setting"):
        rules.render()


@needs_promtool
@pytest.mark.parametrize("settings", [rules.AlertSettings(), rules.AlertSettings.fast()], ids=["production", "fast"])
def test_promtool_accepts_the_rules(settings, tmp_path):
    path = tmp_path / "alerts.yml"
    path.write_text(rules.render(settings))
    result = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


@needs_promtool
def test_the_rules_unit_tests_pass_and_would_catch_a_broken_rule(tmp_path):
    result = subprocess.run([PROMTOOL, "test", "rules", rules.UNIT_TESTS.name], capture_output=True, text=True,
                            cwd=rules.UNIT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    # The same unit tests against rules whose error limit is 50 %: the 10 % canary no longer fires.
    (tmp_path / "alerts.yml").write_text(rules.render(rules.AlertSettings(error_rate=0.5)))
    shutil.copy(rules.UNIT_TESTS, tmp_path / rules.UNIT_TESTS.name)
    broken = subprocess.run([PROMTOOL, "test", "rules", rules.UNIT_TESTS.name], capture_output=True, text=True,
                            cwd=tmp_path)
    assert broken.returncode != 0 and "FledgeVersionErrorRate" in broken.stdout + broken.stderr


def test_the_shipped_dashboard_is_the_builders_output_with_the_panels_asked_for():
    pytest.importorskip("grafana_foundation_sdk", reason="the dev extra installs grafana-foundation-sdk")
    assert dashboard.SHIPPED.read_text() == dashboard.render(), "run python -m serving.monitoring.dashboard"
    board = dashboard.build()
    titles = [panel["title"] for panel in board["panels"]]
    for wanted in ("Traffic share per version", "Canary weight over time", "Time to first token, p95 per version",
                   "Inter-token latency, p95 per version", "Error rate per version"):
        assert wanted in titles
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in board["panels"])
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "model"]
    # Panels tile the grid two to a row without overlapping.
    cells = {(p["gridPos"]["x"], p["gridPos"]["y"]) for p in board["panels"]}
    assert len(cells) == len(board["panels"])


def test_a_panel_query_with_its_variables_filled_has_none_left():
    for _, expr in dashboard.panel_queries(yaml.safe_load(dashboard.SHIPPED.read_text())):
        filled = dashboard.concrete(expr, models="m")
        assert "$" not in filled and 'model=~"m"' in filled
