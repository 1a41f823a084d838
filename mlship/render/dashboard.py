"""The Grafana dashboard of one model: traffic, errors, latency, queue, saturation.

Built as a dict (not a template) because it is JSON through and through; panels read the
metrics the runtime exports on /metrics.
"""

from __future__ import annotations

from typing import Any

_PANEL_WIDTH = 12
_PANEL_HEIGHT = 8


def dashboard(name: str, namespace: str) -> dict[str, Any]:
    selector = f'namespace="{namespace}",job="{name}"'
    queries = [
        ("Requests per second by code",
         f"sum by (code) (rate(mlship_requests_total{{{selector}}}[5m]))", "reqps"),
        ("5xx error ratio",
         f'sum(rate(mlship_requests_total{{{selector},code=~"5.."}}[5m])) / '
         f"sum(rate(mlship_requests_total{{{selector}}}[5m]))", "percentunit"),
        ("Latency p50 / p99",
         "histogram_quantile(0.99, sum by (le) "
         f"(rate(mlship_request_duration_seconds_bucket{{{selector}}}[5m])))", "s"),
        ("Queue depth", f"sum by (pod) (mlship_queue_depth{{{selector}}})", "short"),
    ]
    panels = []
    for index, (title, expr, unit) in enumerate(queries):
        panels.append({
            "id": index + 1,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "gridPos": {"x": (index % 2) * _PANEL_WIDTH, "y": (index // 2) * _PANEL_HEIGHT,
                        "w": _PANEL_WIDTH, "h": _PANEL_HEIGHT},
            "targets": [{"refId": "A", "expr": expr}],
        })
    return {
        "title": f"mlship / {name}",
        "uid": f"mlship-{name}"[:40],
        "tags": ["mlship"],
        "schemaVersion": 39,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{"name": "datasource", "type": "datasource",
                                 "query": "prometheus"}]},
        "panels": panels,
    }
