"""The before/after report of ``yolotune optimize`` as self-contained HTML (inline SVG, like the profile report)."""

from __future__ import annotations

from pathlib import Path

from yolotune.report import plots
from yolotune.report.html import STYLE, escape, format_cell, html_table


def optimize_html(r: dict) -> str:
    parts = [f"<h1>yolotune optimize: {escape(r['model'])} on {escape(r['device'])}</h1>"]
    if r.get("summary"):
        parts.append(f"<p><b>{escape(r['summary'])}</b></p>")
    parts.append(f"<p class=muted>objective {escape(r['objective'])}; accuracy bound {r['max_drop_points']} mAP50-95 points; "
                 f"budget {r['budget_s']} s; search {escape(r.get('search_s', '?'))} s; artifact reload {escape(r.get('reload_s', '?'))} s</p>")
    parts.append("<h2>Candidates</h2>")
    batch = (r.get("chosen") or {}).get("options", {}).get("batch")
    rows = [[c["name"], c.get("status", ""), format_cell(c.get("images_per_s"), 1),
             format_cell(c.get("images_per_s_at_chosen_batch"), 1), format_cell(c.get("latency_ms_b1"), 3),
             format_cell(c.get("memory_mib"), 0), format_cell(c.get("map50_95"), 4), format_cell(c.get("drop_points"), 2),
             format_cell(c.get("seconds"), 1), c.get("reason", "")] for c in r.get("candidates", [])]
    parts.append(html_table(["candidate", "status", "images/s (probe batch)", f"images/s (batch {batch or 'chosen'})",
                             "batch-1 ms", "memory MiB", "mAP50-95", "drop (points)", "seconds", "note"], rows))
    parts.append("<div class=fig>" + plots.candidates_scatter(r) + "</div>")
    for c in r.get("candidates", []):
        ctl = c.get("int8_control")
        if not ctl:
            continue
        parts.append(f"<h2>INT8 accuracy control: {escape(c['name'])}</h2><p>everything INT8 lost "
                     f"{ctl['int8_drop_points']:.2f} mAP50-95 points; with these layer groups back in float, "
                     f"{ctl['drop_points']:.2f}" + (f"; {c['images_per_s']:.1f} images/s against "
                     f"{c['all_int8_images_per_s']:.1f} all INT8 at the probe batch" if c.get("all_int8_images_per_s")
                     and c.get("images_per_s") else "") + "</p>")
        parts.append(html_table(["layer group in float", "output error it removes", "share of the convolutions' work"],
                                [[g["name"], format_cell(g["sensitivity"], 4), f"{g['macs_share']:.1%}"]
                                 for g in ctl["float_groups"]]))
    if r.get("levers"):
        parts.append("<h2>Levers, one at a time</h2><div class=fig>" + plots.lever_bars(r) + "</div>")
    if r.get("batch_sweep"):
        chosen = (r.get("chosen") or {}).get("options", {}).get("batch")
        curve = plots.sweep_curve({"sweep": {"points": r["batch_sweep"], "knee": chosen}})
        parts.append(f"<h2>Batch size (chosen: {escape(chosen)})</h2><div class=fig>{curve}</div>")
    if r.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in r["notes"]) + "</ul>")
    return (f"<!doctype html><html><head><meta charset=utf-8><title>yolotune optimize</title><style>{STYLE}</style>"
            f"</head><body>{''.join(parts)}</body></html>")


def write_optimize_report(r: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(optimize_html(r))
    return path
