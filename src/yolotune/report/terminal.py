"""Summaries in the terminal (rich): predict's run, and the profile's stage table, end-to-end figures and findings."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_profile(p: dict, console: Console | None = None, top: int = 5) -> None:
    console = console or Console()
    dev = p["device"]
    o = p["options"]
    console.print(f"[bold]{p['model']}[/bold] on {dev['name']} - pipeline [bold]{p['pipeline']}[/bold]: "
                  f"batch {o['batch']}, {o.get('dtype')}, graph {'on' if o.get('cuda_graph_active') else 'off'}, "
                  f"preprocess {o.get('preprocess')}, nms {o.get('nms')}")
    kernels = p.get("kernels", {})
    cuda = dev["type"] == "cuda"
    calls = launch_words(dev)
    table = Table(title="Stages (serialised, per image)")
    columns = ("stage", "ms/image", "+/-", "share", "GPU ms", calls, "GPU busy ms") if cuda else \
        ("stage", "ms/image", "+/-", "share", calls)  # a CPU has no GPU time to show
    for col in columns:
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in p["stages"]:
        k = kernels.get(s["stage"], {})
        gpu = s.get("gpu_ms_per_image") if k.get("gpu_busy_ms") else None  # events around host-only work say nothing
        row = [s["stage"], f"{s['ms_per_image']:.3f}", f"{s['ms_per_image_std']:.3f}", f"{s['share']:.0%}"]
        if cuda:
            row += ["" if gpu is None else f"{gpu:.3f}", _count(k.get("launches", 0)) if k else "",
                    f"{k.get('gpu_busy_ms', 0):.3f}" if k else ""]
        else:
            row.append(_count(k.get("launches", 0)) if k else "")
        table.add_row(*row)
    console.print(table)
    e2e = p.get("e2e", {})
    line = (f"end to end (overlapped pipeline): [bold]{e2e.get('images_per_s', 0):.1f} images/s[/bold] "
            f"(+/- {e2e.get('std', 0):.1f} over {len(e2e.get('samples', []))} runs); serialised stages "
            f"{p['serial_ms_per_image']:.2f} ms/image; {p.get('launches_per_image', 0):.0f} {calls}/image")
    console.print(line)
    c = p.get("counters") or {}
    if c.get("available") and c.get("e2e_gpu_util_mean") is not None:
        console.print(f"GPU during end to end: utilisation {c['e2e_gpu_util_mean']:.0f}%, memory bandwidth "
                      f"{c['e2e_mem_util_mean']:.0f}%, SM clock {c['e2e_sm_clock_mhz_mean']:.0f} MHz")
    sweep = p.get("sweep")
    if sweep and sweep.get("points"):
        best = max(sweep["points"], key=lambda q: q["images_per_s"])
        console.print(f"batch sweep: best {best['images_per_s']:.0f} images/s at batch {best['batch']}; "
                      f"curve flattens at batch {sweep['knee']} ({sweep['note']})")
    findings = p.get("findings", [])[:top]
    if findings:
        console.print("[bold]Findings[/bold]")
    for i, f in enumerate(findings, 1):
        gain = f" - predicted {f['predicted_gain']:.2f}x" if f.get("predicted_gain") else ""
        console.print(f" {i}. [bold]{f['title']}[/bold]: {f['evidence']}\n    -> {f['recommendation']}{gain}")
    for v in p.get("verify", []):
        if "error" in v:
            console.print(f" verify {v['kind']}: could not run ({v['error']})")
        else:
            pred = f"predicted {v['predicted_gain']:.2f}x, " if v.get("predicted_gain") else ""
            console.print(f" verify {v['kind']} {v['options']}: {pred}measured {v['measured_gain']:.2f}x "
                          f"({v['images_per_s']:.1f} images/s)")


def launch_words(device: dict) -> str:
    """What the launch counts are: kernel launches on a GPU; on a CPU, the operator calls that stand in for them."""
    return "launches" if device.get("type") == "cuda" else "op calls"


def _count(v: float) -> str:
    return f"{v:.0f}" if v >= 10 or v == 0 else f"{v:.2f}"


def print_predict_summary(summary, console: Console) -> None:
    """predict's summary (a PredictSummary): model, engine, inputs, detections, throughput, outputs, the first
    errors."""
    cfg = summary.config
    table = Table(title="yolotune predict", show_header=False)
    if "model" in cfg:  # (on Ray, from the first actor: none when every input was done before)
        table.add_row("model", f"{cfg['model']} ({cfg['layout']}, {cfg['classes']} classes)")
        table.add_row("engine", f"{cfg['engine']} on {cfg['device']}, {cfg['dtype']}, cuda graph: {cfg['cuda_graph']}, "
                                f"batch {cfg['batch']}")
    for a in summary.actors:
        table.add_row("actor", f"{a['actor']} on {a['device']}: {a['inputs']} inputs, {a['images_per_s']} images/s busy")
    if summary.resumed:
        table.add_row("resumed", f"{summary.resumed} records kept from the run before")
    table.add_row("inputs", f"{summary.inputs} ({summary.ok} ok, {summary.failed} failed)")
    table.add_row("detections", str(summary.detections))
    if summary.images_per_s:
        table.add_row("throughput", f"{summary.images_per_s} images/s over {summary.seconds} s")
    table.add_row("outputs", "\n".join(summary.outputs))
    if summary.skipped_non_media:
        table.add_row("skipped", f"{len(summary.skipped_non_media)} non-media files in directories")
    console.print(table)
    for e in summary.errors[:20]:
        console.print(f"[red]failed[/] {e['path']}{'#' + str(e['frame']) if 'frame' in e else ''}: {e['error']}",
                      markup=True, highlight=False)
    if summary.interrupted:
        console.print(f"stopped by {summary.interrupted}: every output holds the {summary.inputs} inputs done")
    if len(summary.errors) > 20:
        console.print(f"... and {len(summary.errors) - 20} more (see the JSONL output)")
