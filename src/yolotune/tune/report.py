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
    lines += ["| candidate | status | images/s (probe batch) | batch-1 latency ms | memory MiB | mAP50-95 | drop (points) | note |",
              "|---|---|---|---|---|---|---|---|"]
    for c in r["candidates"]:
        f = lambda k, d=1: "" if c.get(k) is None else f"{c[k]:.{d}f}"  # noqa: E731
        lines.append(f"| {c['name']} | {c.get('status', '')} | {f('images_per_s')} | {f('latency_ms_b1', 3)} | "
                     f"{f('memory_mib', 0)} | {f('map50_95', 4)} | {f('drop_points', 2)} | {c.get('reason', '')} |")
    if r.get("levers"):
        lines += ["", "| lever | speedup | mAP drop (points) |", "|---|---|---|"]
        lines += [f"| {lv['lever']} | {lv['speedup']:.2f}x | {lv['drop_points'] if lv['drop_points'] is None else round(lv['drop_points'], 2)} |"
                  for lv in r["levers"]]
    if r.get("batch_sweep"):
        lines += ["", "| batch | images/s | ms per batch | memory MiB |", "|---|---|---|---|"]
        lines += [f"| {s['batch']} | {s['images_per_s']:.0f} | {s['latency_ms']:.2f} | {s['memory_mib'] or ''} |" for s in r["batch_sweep"]]
    lines += [""] + [f"- {n}" for n in r.get("notes", [])]
    return "\n".join(lines) + "\n"
