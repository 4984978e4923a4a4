"""Matplotlib figures of a profile, returned as inline SVG text (the HTML report needs no network or files)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

STAGE_COLORS = {
    "read": "#8c8c8c", "decode": "#e377c2", "h2d": "#bcbd22", "preprocess": "#ff7f0e", "backbone": "#1f77b4",
    "neck": "#17becf", "head": "#2ca02c", "model": "#1f77b4", "nms": "#d62728", "d2h": "#9467bd", "sink": "#7f7f7f",
}


def svg(fig) -> str:
    """The figure as SVG text, the same for the same data (no date, fixed element ids): a report rendered again
    from its JSON is the same page."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "yolotune"}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def stage_bars(p: dict) -> str:
    """Per-image time by stage with spread (std over batches), and the stacked total."""
    stages = p["stages"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 4.8), gridspec_kw={"height_ratios": [3, 1]})
    names = [s["stage"] for s in stages]
    vals = [s["ms_per_image"] for s in stages]
    std = [s["ms_per_image_std"] for s in stages]
    ax1.barh(names, vals, xerr=[[min(d, v) for d, v in zip(std, vals)], std], capsize=3,
             color=[STAGE_COLORS.get(n, "#999") for n in names])
    ax1.invert_yaxis()
    ax1.set_xlabel("ms per image (serialised run; bars: std over batches)")
    for i, v in enumerate(vals):
        ax1.text(v, i, f" {v:.3f}", va="center", fontsize=8)
    left = 0.0
    for n, v in zip(names, vals):
        ax2.barh(["total"], [v], left=left, color=STAGE_COLORS.get(n, "#999"), label=n)
        left += v
    ax2.set_xlabel("ms per image, stacked")
    ax2.legend(ncol=6, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.6), frameon=False)
    fig.tight_layout()
    return svg(fig)


def waterfall(p: dict, batches: int = 4) -> str:
    """The first batches of the serialised run: host span and GPU span of every stage on one clock."""
    rows = p.get("timeline", [])
    if not rows:
        return ""
    first = sorted({r[1] for r in rows})[:batches]
    rows = [r for r in rows if r[1] in first]
    t0 = min(r[3] for r in rows)
    fig, ax = plt.subplots(figsize=(9, 2.6))
    for stage, _b, _n, h0, _he, h1, g0, g1 in rows:
        c = STAGE_COLORS.get(stage, "#999")
        ax.broken_barh([((h0 - t0) * 1e3, (h1 - h0) * 1e3)], (10, 8), color=c)
        if g0 is not None:
            ax.broken_barh([((g0 - t0) * 1e3, max(0.0, g1 - g0) * 1e3)], (0, 8), color=c, alpha=0.7)
    ax.set_yticks([4, 14], ["GPU (events)", "host"])
    ax.set_xlabel(f"ms from the start of batch {first[0]} (first {len(first)} batches)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=STAGE_COLORS.get(s, "#999")) for s in dict.fromkeys(r[0] for r in rows)]
    ax.legend(handles, list(dict.fromkeys(r[0] for r in rows)), ncol=6, fontsize=7, loc="upper center",
              bbox_to_anchor=(0.5, -0.35), frameon=False)
    fig.tight_layout()
    return svg(fig)


def sweep_curve(p: dict) -> str:
    sweep = p.get("sweep") or {}
    pts = sweep.get("points") or []
    if not pts:
        return ""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    b = [q["batch"] for q in pts]
    ax.plot(b, [q["images_per_s"] for q in pts], "o-", color="#1f77b4", label="images/s")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s (model + NMS)", color="#1f77b4")
    if sweep.get("knee"):
        ax.axvline(sweep["knee"], color="#999", ls="--", lw=1)
        ax.text(sweep["knee"], ax.get_ylim()[1] * 0.95, f" flattens at {sweep['knee']}", fontsize=8, va="top")
    ax2 = ax.twinx()
    ax2.plot(b, [q["latency_ms"] for q in pts], "s--", color="#d62728", label="latency")
    ax2.set_ylabel("ms per batch", color="#d62728")
    ax2.set_yscale("log")
    fig.tight_layout()
    return svg(fig)


def roofline(p: dict) -> str:
    roof = p.get("roofline") or {}
    pts = roof.get("points") or []
    peaks = roof.get("peaks")
    if not pts or not peaks:
        return ""
    import numpy as np

    # a CPU's roof and points read in GFLOP/s, a GPU's in TFLOP/s
    scale, unit = (1e12, "TFLOP/s") if peaks["flops"] >= 2e12 else (1e9, "GFLOP/s")
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ai = np.logspace(-1, 4, 200)
    ax.plot(ai, np.minimum(peaks["flops"], ai * peaks["bandwidth"]) / scale, color="k", lw=1.5,
            label=f"roof ({peaks['source']}: {peaks['flops'] / scale:,.0f} {unit}, {peaks['bandwidth'] / 1e9:,.0f} GB/s)")
    if peaks["source"] == "datasheet":
        ax.plot(ai, np.minimum(peaks["measured_flops"], ai * peaks["measured_bandwidth"]) / scale, color="#999", lw=1,
                ls="--", label="measured roof (matmul, copy)")
    for q in pts:  # named in the legend, not beside the points: points of one model sit close and labels collide
        ax.scatter([q["intensity"]], [q["achieved_tflops"] * 1e12 / scale], color=STAGE_COLORS.get(q["name"], "#333"),
                   s=60 if q["name"] == "model" else 35, marker="*" if q["name"] == "model" else "o", zorder=3,
                   label=f"{q['name']}: {q['fraction_of_roof']:.0%} of the roof")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel(unit)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return svg(fig)


def counters(p: dict) -> str:
    c = p.get("counters") or {}
    if not c.get("available") or not c.get("t"):
        return ""
    fig, ax = plt.subplots(figsize=(9, 3))
    t = c["t"]
    ax.plot(t, c["gpu_util"], lw=1, label="GPU utilisation %")
    ax.plot(t, c["mem_util"], lw=1, label="memory bandwidth utilisation %")
    ax.set_ylim(0, 105)
    ax.set_xlabel("s since the profile started")
    ax.set_ylabel("%")
    ax2 = ax.twinx()
    ax2.plot(t, c["mem_used_mib"], lw=1, color="#9467bd", label="memory used MiB")
    ax2.set_ylabel("MiB")
    for i, ph in enumerate(p.get("phases", [])):
        ax.axvspan(ph["start"], ph["end"], color="#000", alpha=0.04 if i % 2 else 0.08)
        ax.text((ph["start"] + ph["end"]) / 2, 101, ph["name"], fontsize=6, ha="center", va="bottom", rotation=0)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22),
              ncol=3, frameon=False)
    fig.tight_layout()
    return svg(fig)


def candidates_scatter(r: dict) -> str:
    """Optimize: each measured candidate's speed against its accuracy drop, with the bound; the chosen one ringed."""
    cands = [c for c in r.get("candidates", []) if c.get("images_per_s") and c.get("drop_points") is not None]
    if not cands:
        return ""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = {"passed": "#2ca02c", "rejected": "#d62728"}
    chosen = (r.get("chosen") or {}).get("name")
    for c in cands:
        ax.scatter(c["drop_points"], c["images_per_s"], color=colors.get(c["status"], "#7f7f7f"), s=40, zorder=3)
        ax.annotate(c["name"], (c["drop_points"], c["images_per_s"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
        if c["name"] == chosen:
            ax.scatter(c["drop_points"], c["images_per_s"], s=180, facecolors="none", edgecolors="#000", zorder=4)
    ax.axvline(r.get("max_drop_points", 1.0), color="#999", ls="--", lw=1)
    ax.text(r.get("max_drop_points", 1.0), ax.get_ylim()[1], " accuracy bound", fontsize=8, va="top")
    ax.set_xlabel("mAP50-95 drop (points) vs the FP32 reference")
    ax.set_ylabel("images/s at the probe batch")
    fig.tight_layout()
    return svg(fig)


def lever_bars(r: dict) -> str:
    """Optimize: each lever's speed-up measured one at a time."""
    levers = r.get("levers") or []
    if not levers:
        return ""
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(levers) + 0.8))
    names = [lv["lever"] for lv in levers][::-1]
    vals = [lv["speedup"] for lv in levers][::-1]
    ax.barh(names, vals, color=["#2ca02c" if v >= 1 else "#d62728" for v in vals])
    ax.axvline(1.0, color="#333", lw=1)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:.2f}x", va="center", fontsize=8)
    ax.set_xlabel("speed-up")
    fig.tight_layout()
    return svg(fig)
