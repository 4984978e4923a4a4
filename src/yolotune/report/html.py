"""A self-contained HTML report of a profile: figures inline as SVG, no scripts, no network."""

from __future__ import annotations

import html
from pathlib import Path

from yolotune.report import plots
from yolotune.report.terminal import launch_words

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.finding{border-left:4px solid #d62728;padding:4px 12px;margin:10px 0;background:#fafafa}
.muted{color:#666}.fig svg{max-width:100%;height:auto}
"""


def escape(x) -> str:
    return html.escape(str(x))


def html_table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def format_cell(v, digits: int = 3) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def profile_html(p: dict, diagram_svg: str = "") -> str:
    dev, o, e2e = p["device"], p["options"], p.get("e2e", {})
    parts = [f"<h1>yolotune profile: {escape(p['model'])} on {escape(dev['name'])}</h1>",
             f"<p class=muted>pipeline <b>{escape(p['pipeline'])}</b>: batch {o['batch']}, {escape(o.get('dtype'))}, CUDA graph "
             f"{'on' if o.get('cuda_graph_active') else 'off'}, preprocess {escape(o.get('preprocess'))}, NMS {escape(o.get('nms'))}; "
             f"{p.get('inputs', {}).get('images', '?')} images per pass; torch {escape(dev.get('torch'))}; {escape(p['created'])}</p>",
             f"<p><b>End to end (the real overlapped pipeline): {e2e.get('images_per_s', 0):.1f} images/s</b> "
             f"(std {e2e.get('std', 0):.1f} over {len(e2e.get('samples', []))} runs). Serialised stages: "
             f"{p['serial_ms_per_image']:.3f} ms/image; {p.get('launches_per_image', 0):.1f} {launch_words(dev)}/image.</p>"]
    parts.append("<h2>Findings</h2>")
    for f in p.get("findings", []):
        gain = f" Predicted gain: <b>{f['predicted_gain']:.2f}x</b> ({escape(f['basis'])})." if f.get("predicted_gain") else ""
        opts = f" Options: <code>{escape(f['options'])}</code>." if f.get("options") else ""
        parts.append(f"<div class=finding><b>{escape(f['title'])}</b><br>{escape(f['evidence'])}<br>&rarr; "
                     f"{escape(f['recommendation'])}{opts}{gain}</div>")
    if not p.get("findings"):
        parts.append("<p>No bottleneck beyond the thresholds.</p>")
    if p.get("verify"):
        parts.append("<h2>Verification: recommendations applied and measured</h2>")
        rows = [[v["kind"], v["options"], format_cell(v.get("predicted_gain"), 2), format_cell(v.get("images_per_s"), 1),
                 format_cell(v.get("measured_gain"), 2), v.get("error", "")] for v in p["verify"]]
        parts.append(html_table(["finding", "options", "predicted gain", "images/s", "measured gain", "error"], rows))
    parts.append("<h2>Stages</h2><div class=fig>" + plots.stage_bars(p) + "</div>")
    kernels = p.get("kernels", {})
    rows = []
    cuda = dev["type"] == "cuda"
    for s in p["stages"]:
        k = kernels.get(s["stage"], {})
        row = [s["stage"], format_cell(s["ms_per_image"]), format_cell(s["ms_per_image_std"]), format_cell(s["ms_per_image_p50"]),
               f"{s['share']:.0%}", format_cell(k.get("launches"), 2)]
        rows.append(row + [format_cell(k.get("launch_api_ms")), format_cell(k.get("gpu_busy_ms"))] if cuda else row)
    head = ["stage", "ms/image", "std", "p50", "share", f"{launch_words(dev)}/image"]
    parts.append(html_table(head + (["launch API ms", "GPU busy ms"] if cuda else []), rows))  # a CPU has no GPU time
    parts.append("<h2>Timeline of the first batches</h2><div class=fig>" + plots.waterfall(p) + "</div>")
    parts.append("<p class=muted>The full timeline is in trace.json (open it in ui.perfetto.dev).</p>")
    sweep_svg = plots.sweep_curve(p)
    if sweep_svg:
        parts.append(f"<h2>Batch sweep</h2><p class=muted>{escape(p['sweep']['note'])}</p><div class=fig>{sweep_svg}</div>")
    roof_svg = plots.roofline(p)
    if roof_svg:
        peaks = p["roofline"]["peaks"]
        parts.append(f"<h2>Roofline</h2><p class=muted>{escape(peaks['device'])}, {escape(peaks['precision'])}; FLOPs and bytes "
                     "per section from the layers' shapes (bytes as eager kernels move them); time from the stages' "
                     f"{'GPU' if cuda else 'wall'} time at batch {p['roofline'].get('batch')}.</p>"
                     f"<div class=fig>{roof_svg}</div>")
    c_svg = plots.counters(p)
    if c_svg:
        parts.append("<h2>GPU counters (NVML)</h2><div class=fig>" + c_svg + "</div>")
    elif p.get("counters", {}).get("reason"):
        parts.append(f"<h2>GPU counters</h2><p class=muted>{escape(p['counters']['reason'])}</p>")
    layers = sorted(p.get("layers", []), key=lambda q: -q["ms"])[:12]
    if layers:
        parts.append("<h2>Slowest layers (eager, per batch)</h2>")
        parts.append(html_table(["layer", "type", "section", "output", "ms", "GFLOP", "MB moved"],
                            [[q["index"], q["type"], q["section"], "x".join(map(str, q["out_shape"])), format_cell(q["ms"]),
                              format_cell(q["flops"] / 1e9, 2), format_cell(q["bytes"] / 1e6, 1)] for q in layers]))
    if diagram_svg:
        parts.append("<h2>Architecture (latency painted)</h2><div class=fig>" + diagram_svg + "</div>")
    return f"<!doctype html><html><head><meta charset=utf-8><title>yolotune profile</title><style>{STYLE}</style></head><body>{''.join(parts)}</body></html>"


def write_profile_report(p: dict, path: str | Path) -> Path:
    from yolotune.report.diagram import diagram_svg_from_layers

    path = Path(path)
    diagram = diagram_svg_from_layers(p.get("layers") or [], title=str(p.get("model"))) if p.get("layers") else ""
    path.write_text(profile_html(p, diagram))
    return path
