"""Grafana dashboards as code: `python -m dashboards.generate` writes dashboards/json/ (see docs/dashboards.md)."""
