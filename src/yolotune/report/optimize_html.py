"""The before/after report of ``yolotune optimize`` as self-contained HTML (inline SVG, like the profile report)."""

from __future__ import annotations

from pathlib import Path

from yolotune.report import plots
from yolotune.report.html import _STYLE, _e, _fmt, _table


def optimize_html(r: dict) -> str:
    parts = [f"<h1>yolotune optimize: {_e(r['model'])} on {_e(r['device'])}</h1>"]
    if r.get("summary"):
        parts.append(f"<p><b>{_e(r['summary'])}</b></p>")
    parts.append(f"<p class=muted>objective {_e(r['objective'])}; accuracy bound {r['max_drop_points']} mAP50-95 points; "
                 f"budget {r['budget_s']} s; search {_e(r.get('search_s', '?'))} s; artifact reload {_e(r.get('reload_s', '?'))} s</p>")
    parts.append("<h2>Candidates</h2>")
    rows = [[c["name"], c.get("status", ""), _fmt(c.get("images_per_s"), 1), _fmt(c.get("latency_ms_b1"), 3),
             _fmt(c.get("memory_mib"), 0), _fmt(c.get("map50_95"), 4), _fmt(c.get("drop_points"), 2),
             _fmt(c.get("seconds"), 1), c.get("reason", "")] for c in r.get("candidates", [])]
    parts.append(_table(["candidate", "status", "images/s (probe batch)", "batch-1 ms", "memory MiB", "mAP50-95",
                         "drop (points)", "seconds", "note"], rows))
    parts.append("<div class=fig>" + plots.candidates_scatter(r) + "</div>")
    if r.get("levers"):
        parts.append("<h2>Levers, one at a time</h2><div class=fig>" + plots.lever_bars(r) + "</div>")
    if r.get("batch_sweep"):
        chosen = (r.get("chosen") or {}).get("options", {}).get("batch")
        curve = plots.sweep_curve({"sweep": {"points": r["batch_sweep"], "knee": chosen}})
        parts.append(f"<h2>Batch size (chosen: {_e(chosen)})</h2><div class=fig>{curve}</div>")
    if r.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{_e(n)}</li>" for n in r["notes"]) + "</ul>")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>yolotune optimize</title><style>{_STYLE}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def write_optimize_report(r: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(optimize_html(r))
    return path
