"""What the serving plane looks like from Prometheus and Grafana: alerting rules (alerts.yml,
rendered by serving.monitoring.rules) and a dashboard (dashboard.json)."""
