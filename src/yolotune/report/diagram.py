"""Architecture diagram of a loaded model: one block per layer, rows for backbone / neck / head, tensor shapes,
skip connections drawn as arcs, and blocks coloured by measured latency when a profile is given."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from yolotune.report.plots import svg  # noqa: E402

_SECTION_FILL = {"backbone": "#dbe9f6", "neck": "#d7f0f2", "head": "#dcefd8"}
_ROW = {"backbone": 2, "neck": 1, "head": 0}


def _shape_text(shape) -> str:
    if not shape:
        return ""
    if isinstance(shape[0], list):
        shape = shape[0]
    return "x".join(str(v) for v in shape[1:])


def draw_layers(layers: list[dict], title: str = "", width: float = 1.25, gap: float = 0.35):
    """A matplotlib figure of ``layers`` (LayerInfo dicts). Colour = ms when any layer has a time."""
    timed = any(q.get("ms") for q in layers)
    cmap = plt.get_cmap("YlOrRd")
    vmax = max((q.get("ms") or 0) for q in layers) or 1.0
    cols: dict[str, int] = {}
    pos: dict[int, tuple[float, float]] = {}
    for q in layers:
        col = cols.get(q["section"], 0)
        cols[q["section"]] = col + 1
        pos[q["index"]] = (col * (width + gap), _ROW.get(q["section"], 1) * 1.6)
    n_cols = max(cols.values()) if cols else 1
    fig, ax = plt.subplots(figsize=(max(8.0, n_cols * 1.05), 5.0))
    for q in layers:
        x, y = pos[q["index"]]
        fill = cmap(0.15 + 0.85 * (q.get("ms") or 0) / vmax) if timed else _SECTION_FILL.get(q["section"], "#eee")
        ax.add_patch(FancyBboxPatch((x, y), width, 0.9, boxstyle="round,pad=0.02", fc=fill, ec="#333", lw=0.8))
        label = f"{q['index']} {q['type']}\n{_shape_text(q.get('out_shape'))}"
        if timed:
            label += f"\n{q['ms']:.3f} ms"
        dark = timed and (q.get("ms") or 0) / vmax > 0.6
        ax.text(x + width / 2, y + 0.45, label, ha="center", va="center", fontsize=6.2, color="white" if dark else "black")
    for q in layers:  # data flow: the previous layer (-1) and any skip inputs
        x1, y1 = pos[q["index"]]
        for s in q.get("source", [-1]):
            src = q["index"] - 1 if s == -1 else s
            if src < 0 or src not in pos:
                continue
            x0, y0 = pos[src]
            same_row = y0 == y1 and src == q["index"] - 1
            start = (x0 + width, y0 + 0.45) if same_row else (x0 + width / 2, y0 + (0 if y0 > y1 else 0.9))
            end = (x1, y1 + 0.45) if same_row else (x1 + width / 2, y1 + (0.9 if y0 > y1 else 0))
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=7, lw=0.7,
                                         color="#555" if same_row else "#c44",
                                         connectionstyle="arc3,rad=0" if same_row else "arc3,rad=-0.15"))
    for section, row in _ROW.items():
        if section in cols:
            ax.text(-0.25, row * 1.6 + 0.45, section, ha="right", va="center", fontsize=9, weight="bold")
    ax.set_xlim(-1.4, n_cols * (width + gap))
    ax.set_ylim(-0.3, 2 * 1.6 + 1.2)
    ax.axis("off")
    total = sum(q.get("ms") or 0 for q in layers)
    heading = title + (f" - layer latency painted (eager, per batch; total {total:.2f} ms)" if timed else "")
    ax.set_title(heading, fontsize=10)
    if timed:
        sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, vmax))
        fig.colorbar(sm, ax=ax, fraction=0.02, pad=0.01, label="ms")
    return fig


def diagram_svg_from_layers(layers: list[dict], title: str = "") -> str:
    return svg(draw_layers(layers, title))


def write_diagram(model: str, out: str | Path, profile: dict | None = None, imgsz: int = 640) -> Path:
    """Load ``model``, trace its layers at ``imgsz`` (shapes, FLOPs) and write the diagram as SVG or PNG.

    With ``profile`` (a profile.json of the same model), blocks are coloured by its measured layer times.
    """
    import torch

    from yolotune.models import load_model
    from yolotune.profile.sections import SectionRunner, count_flops_and_bytes

    loaded = load_model(model)
    inner = getattr(loaded.runnable, "model", None)
    if inner is None or not hasattr(inner, "model"):
        raise ValueError(f"{model}: only PyTorch (Ultralytics) models have a layer structure to draw")
    inner = inner.float().eval()
    runner = SectionRunner(inner)
    count_flops_and_bytes(runner, torch.zeros(1, 3, imgsz, imgsz))
    layers = [q.to_dict() for q in runner.infos]
    if profile:
        timed = {(q["index"], q["type"]): q.get("ms", 0.0) for q in profile.get("layers", [])}
        if not any((q["index"], q["type"]) in timed for q in layers):
            raise ValueError("the profile's layers do not match this model")
        for q in layers:
            q["ms"] = timed.get((q["index"], q["type"]), 0.0)
    fig = draw_layers(layers, title=Path(str(model)).name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png" if out.suffix.lower() == ".png" else "svg", bbox_inches="tight", dpi=150)
    plt.close(fig)
    return out
