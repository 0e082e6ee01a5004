"""report.html: one self-contained page (grids inlined as base64 PNG, no external files)."""

from __future__ import annotations

import base64
import io
import json
from html import escape

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #bbb;padding:.3em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}
pre{background:#f5f5f5;padding:1em;overflow:auto;font-size:.85em}
img{max-width:100%;image-rendering:pixelated}
"""


def _png_data_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else escape(str(value))


def _metric_table(report: dict) -> str:
    labels = list(report["models"])
    head = "".join(f"<th>{escape(label)}</th>" for label in labels)
    rows = []
    for entry in report["metrics"]:
        if "all" in entry["results"]:
            continue
        cells = "".join(f"<td>{_cell(entry['results'][lb].get('value'))}</td>" for lb in labels)
        rows.append(f"<tr><td>{escape(entry['name'])}</td>{cells}</tr>")
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(rows)}</table>"


def render_report_html(report: dict, grids: dict) -> str:
    """The page: metric table (one column per model), grids, then every setting as JSON."""
    figures = "".join(
        f'<figure><img alt="{escape(name)}" src="{_png_data_uri(image)}">'
        f"<figcaption>{escape(name)}</figcaption></figure>"
        for name, image in grids.items()
    )
    settings = {k: report[k] for k in ("models", "sampler", "seed_rule", "versions")}
    details = "".join(
        f"<h3>{escape(e['name'])}</h3><pre>{escape(json.dumps(_shown(e), indent=2))}</pre>"
        for e in report["metrics"]
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>MACE evaluation</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>MACE evaluation</h1><p>Started {escape(report['started_at'])}, "
        f"{report['duration_s']:.1f} s.</p>"
        f"<h2>Metrics</h2>{_metric_table(report)}"
        f"<h2>Side by side</h2>{figures or '<p>No image_grid metric in this run.</p>'}"
        f"<h2>Settings</h2><pre>{escape(json.dumps(settings, indent=2))}</pre>"
        f"<h2>Per metric</h2>{details}</body></html>"
    )


def _shown(entry: dict) -> dict:
    """A metric's entry without its bulkiest detail (raw detections stay in report.json)."""
    results = {
        label: {
            **r,
            "details": {k: v for k, v in r.get("details", {}).items() if k != "detections"},
        }
        for label, r in entry["results"].items()
    }
    return {**entry, "results": results}
