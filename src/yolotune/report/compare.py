"""Two profiles side by side: per stage and end to end, with changes beyond run-to-run noise flagged.

A change is flagged when it exceeds both a relative floor (5%) and twice the combined standard error of the two
means, from the repeated measurements each profile holds (per-batch samples for stages, repeated runs end to end).
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

MIN_RELATIVE = 0.05


def _stats(samples: list[float], weights: list[float] | None = None) -> tuple[float, float, float]:
    """Mean, standard deviation and effective sample count; ``weights``: the images behind each per-image sample,
    so a batch of 8 counts eight times a batch of 1 (the profile's own ms/image is total time over images)."""
    n = len(samples)
    if n == 0:
        return 0.0, 0.0, 0
    w = weights if weights and len(weights) == n else [1.0] * n
    total = sum(w)
    mean = sum(wi * x for wi, x in zip(w, samples)) / total
    effective = total**2 / sum(wi * wi for wi in w)
    var = sum(wi * (x - mean) ** 2 for wi, x in zip(w, samples)) / total * n / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var), effective


def _verdict(a: list[float], b: list[float], higher_is_better: bool, wa: list | None = None,
             wb: list | None = None) -> dict:
    ma, sa, na = _stats(a, wa)
    mb, sb, nb = _stats(b, wb)
    na_samples, nb_samples = len(a), len(b)
    se = math.sqrt((sa**2 / na if na else 0) + (sb**2 / nb if nb else 0))
    delta = mb - ma
    rel = delta / ma if ma else 0.0
    significant = abs(rel) > MIN_RELATIVE and abs(delta) > 2 * se
    better = (delta > 0) == higher_is_better
    verdict = ("gain" if better else "regression") if significant else "within noise"
    return {"a": ma, "a_std": sa, "a_n": na_samples, "b": mb, "b_std": sb, "b_n": nb_samples, "change": rel, "noise": 2 * se,
            "verdict": verdict}


def _images_behind(stage: dict) -> list[float] | None:
    """Images per sample: recorded by the profiler; for a profile without them, the weights that make the mean its
    own ms/image are unknown, so samples weigh alike."""
    return stage.get("sample_images")


def describe(meta: dict) -> str:
    """One side of a comparison in words."""
    graph = "graph on" if meta.get("cuda_graph") else "graph off"
    return (f"{meta.get('model')} / {meta.get('pipeline')} on {meta.get('device')}, batch {meta.get('batch')}, "
            f"{meta.get('dtype')}, {graph} ({meta.get('created')})")


def compare_profiles(a: dict, b: dict) -> dict:
    """Comparison dict: metadata of both, end-to-end verdict, and one verdict per stage (ms/image, lower is better)."""
    for p in (a, b):
        if "stages" not in p or "e2e" not in p:
            raise ValueError("missing 'stages' or 'e2e'")
    sa = {s["stage"]: s for s in a["stages"]}
    sb = {s["stage"]: s for s in b["stages"]}
    stages = []
    for name in list(sa) + [n for n in sb if n not in sa]:
        if name in sa and name in sb:
            stages.append({"stage": name, **_verdict(sa[name]["samples"], sb[name]["samples"], higher_is_better=False,
                                                     wa=_images_behind(sa[name]), wb=_images_behind(sb[name]))})
        else:
            stages.append({"stage": name, "a": sa[name]["ms_per_image"] if name in sa else None,
                           "b": sb[name]["ms_per_image"] if name in sb else None,
                           "verdict": "only in " + ("A" if name in sa else "B"), "change": None, "noise": None,
                           "a_std": None, "b_std": None, "a_n": None, "b_n": None})
    meta = lambda p: {"model": p.get("model"), "pipeline": p.get("pipeline"), "device": p["device"].get("name"),  # noqa: E731
                      "batch": p["options"].get("batch"), "dtype": p["options"].get("dtype"),
                      "cuda_graph": p["options"].get("cuda_graph_active"), "created": p.get("created")}
    return {
        "a": meta(a), "b": meta(b),
        "e2e": _verdict(a["e2e"]["samples"], b["e2e"]["samples"], higher_is_better=True),
        "speedup": b["e2e"]["images_per_s"] / a["e2e"]["images_per_s"] if a["e2e"]["images_per_s"] else None,
        "launches_per_image": [a.get("launches_per_image"), b.get("launches_per_image")],
        "serial_ms_per_image": [a.get("serial_ms_per_image"), b.get("serial_ms_per_image")],
        "stages": stages,
    }


_STYLE = {"gain": "green", "regression": "red"}


def print_comparison(c: dict, console: Console | None = None) -> None:
    console = console or Console()
    for side in ("a", "b"):
        console.print(f"{side.upper()}: {describe(c[side])}")
    e = c["e2e"]
    console.print(f"end to end: {e['a']:.1f} -> {e['b']:.1f} images/s ({c['speedup']:.2f}x), "
                  f"[{_STYLE.get(e['verdict'], 'white')}]{e['verdict']}[/]")
    t = Table(title="per stage, ms/image (mean +/- std over batches)")
    for col in ("stage", "A", "B", "change", "noise (2 SE)", "verdict"):
        t.add_column(col, justify="left" if col in ("stage", "verdict") else "right")
    for s in c["stages"]:
        fmt = lambda v, sd: "" if v is None else (f"{v:.3f}" + (f" +/- {sd:.3f}" if sd else ""))  # noqa: E731
        t.add_row(s["stage"], fmt(s["a"], s["a_std"]), fmt(s["b"], s["b_std"]),
                  "" if s["change"] is None else f"{s['change']:+.0%}", "" if s["noise"] is None else f"{s['noise']:.3f}",
                  f"[{_STYLE.get(s['verdict'], 'white')}]{s['verdict']}[/]")
    console.print(t)


def write_comparison_html(c: dict, path: str | Path) -> Path:
    e = html.escape

    def num(v, fmt: str) -> str:
        return "" if v is None else format(v, fmt)

    rows = "".join(
        f"<tr><td>{e(s['stage'])}</td><td>{num(s['a'], '.3f')}</td><td>{num(s['b'], '.3f')}</td>"
        f"<td>{num(s['change'], '+.0%')}</td><td style='color:{_STYLE.get(s['verdict'], '#333')}'>{e(s['verdict'])}</td></tr>"
        for s in c["stages"])
    d = c["e2e"]
    body = (f"<h1>yolotune compare</h1><p>A: {e(describe(c['a']))}<br>B: {e(describe(c['b']))}</p>"
            f"<p><b>end to end {d['a']:.1f} -> {d['b']:.1f} images/s ({c['speedup']:.2f}x): {e(d['verdict'])}</b></p>"
            f"<table border=1 cellpadding=4><tr><th>stage</th><th>A ms/image</th><th>B ms/image</th><th>change</th>"
            f"<th>verdict</th></tr>{rows}</table>")
    path = Path(path)
    path.write_text(f"<!doctype html><html><head><meta charset=utf-8><title>yolotune compare</title></head><body>{body}</body></html>")
    return path
