"""OptimizeReport: what ``optimize`` measured and chose, and its JSON, Markdown and HTML forms."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from yolotune.options import DetectorOptions
from yolotune.tune.candidates import Candidate


@dataclass
class Lever:
    """One option's contribution, measured as a pair of runs that differ in it alone."""

    lever: str
    start: str | int  # the run without it (a candidate's name, or a batch size)
    end: str | int  # the run with it
    speedup: float
    drop_points: float | None
    batch: int | None

    def to_dict(self) -> dict:
        return {"lever": self.lever, "from": self.start, "to": self.end, "speedup": self.speedup,
                "drop_points": self.drop_points, "batch": self.batch}


@dataclass
class Chosen:
    """The winner as saved: its name, the options the artifact keeps, and its measurements."""

    name: str
    options: DetectorOptions
    result: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "options": self.options.saved(),
                **{k: v for k, v in self.result.items() if not k.startswith("_")}}


@dataclass
class OptimizeReport:
    model: str
    device: str
    objective: str
    latency_ms: float | None
    target_fps: float | None
    memory_mib: float | None
    budget_s: float
    max_drop_points: float
    candidates: list[Candidate] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    chosen: Chosen | None = None
    canvas: tuple[tuple[int, int], tuple[int, int]] | None = None  # (images' (h, w), the canvas tuned on)
    batch_sweep: list[dict] = field(default_factory=list)  # SweepPoint.to_dict() rows, by batch
    summary: str | None = None
    levers: list[Lever] = field(default_factory=list)
    search_s: float | None = None
    reload_s: float | None = None

    def to_dict(self) -> dict:
        """The report as report.json holds it (what the HTML and Markdown forms render)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["candidates"] = [_public(c.to_dict()) for c in self.candidates]
        d["chosen"] = self.chosen.to_dict() if self.chosen else None
        d["levers"] = [lv.to_dict() for lv in self.levers]
        if self.canvas is None:
            d.pop("canvas")
        else:
            d["canvas"] = {"images": list(self.canvas[0]), "imgsz": list(self.canvas[1])}
        return {k: v for k, v in d.items() if v is not None or k in ("chosen", "latency_ms", "target_fps", "memory_mib")}


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def write_report(out: Path, report: OptimizeReport) -> None:
    data = report.to_dict()
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "report.md").write_text(report_markdown(data))
    from yolotune.report.optimize_html import write_optimize_report

    write_optimize_report(data, out / "report.html")


def report_markdown(r: dict) -> str:
    lines = [f"# yolotune optimize: {r['model']} on {r['device']}", ""]
    if r.get("summary"):
        lines += [f"**{r['summary']}**", ""]
    lines += [f"Objective: {r['objective']}; accuracy bound {r['max_drop_points']} mAP50-95 points; budget {r['budget_s']} s"
              + (f"; search took {r['search_s']} s; reloading the artifact {r['reload_s']} s" if r.get("search_s") else ""), ""]
    batch = (r.get("chosen") or {}).get("options", {}).get("batch")
    lines += [f"| candidate | status | images/s (probe batch) | images/s (batch {batch or 'chosen'}) | batch-1 latency ms "
              "| memory MiB | mAP50-95 | drop (points) | note |", "|---|---|---|---|---|---|---|---|---|"]
    for c in r["candidates"]:
        f = lambda k, d=1: "" if c.get(k) is None else f"{c[k]:.{d}f}"  # noqa: E731
        lines.append(f"| {c['name']} | {c.get('status', '')} | {f('images_per_s')} | {f('images_per_s_at_chosen_batch')} | "
                     f"{f('latency_ms_b1', 3)} | {f('memory_mib', 0)} | {f('map50_95', 4)} | {f('drop_points', 2)} | "
                     f"{c.get('reason', '')} |")
    for c in r["candidates"]:
        lines += int8_control_lines(c)
    if r.get("levers"):
        lines += ["", "| lever | speedup | mAP drop (points) |", "|---|---|---|"]
        lines += [f"| {lv['lever']} | {lv['speedup']:.2f}x | {lv['drop_points'] if lv['drop_points'] is None else round(lv['drop_points'], 2)} |"
                  for lv in r["levers"]]
    if r.get("batch_sweep"):
        lines += ["", "| batch | images/s | ms per batch | memory MiB |", "|---|---|---|---|"]
        lines += [f"| {s['batch']} | {s['images_per_s']:.0f} | {s['latency_ms']:.2f} | {s['memory_mib'] or ''} |" for s in r["batch_sweep"]]
    lines += [""] + [f"- {n}" for n in r.get("notes", [])]
    return "\n".join(lines) + "\n"


def int8_control_lines(c: dict) -> list[str]:
    """A mixed INT8 candidate's accuracy control in Markdown: which layers stayed float, why, what they cost."""
    ctl = c.get("int8_control")
    if not ctl:
        return []
    out = ["", f"**{c['name']}**: everything INT8 lost {ctl['int8_drop_points']:.2f} mAP50-95 points; with the "
               f"{len(ctl['float_groups'])} layer groups below back in float, {ctl['drop_points']:.2f}."]
    if c.get("all_int8_images_per_s") and c.get("images_per_s"):
        out[-1] += (f" Speed: {c['images_per_s']:.1f} images/s against {c['all_int8_images_per_s']:.1f} all INT8 "
                    f"({c['images_per_s'] / c['all_int8_images_per_s']:.2f}x) at the probe batch.")
    out += ["", "| layer group in float | output error it removes | share of the convolutions' work |", "|---|---|---|"]
    out += [f"| {g['name']} | {g['sensitivity']:.4f} | {g['macs_share']:.1%} |" for g in ctl["float_groups"]]
    steps = ", ".join(f"{s['float_groups']} in float: {s['drop_points']:.2f}" for s in ctl["steps"])
    return out + ["", f"Validated steps (groups in float: drop in points): {steps}."]
