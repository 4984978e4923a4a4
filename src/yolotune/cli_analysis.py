"""Commands that analyse rather than detect: ``profile``, ``diagram``, ``compare`` (registered on the main app)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from yolotune.cli_shared import TRUST_MODEL, console, output_file, output_folder, stage_progress, trust_models
from yolotune.cli_shared import fail as _fail


def profile_command(
    model: str = typer.Argument(..., metavar="MODEL", help="Model: default, Ultralytics .pt / .yaml, or ONNX."),
    sources: Optional[list[str]] = typer.Argument(None, metavar="SOURCES", help="Images or folders, or a video (its frames; default: 64 generated 720p photos)."),
    pipeline: str = typer.Option("optimized", help="Preset: 'plain' (CPU decode, eager FP32, batch 1, NMS loop) or 'optimized'."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    batch: Optional[int] = typer.Option(None, help="Override the preset's batch size."),
    precision: Optional[str] = typer.Option(None, help="Override: fp32, fp16, bf16."),
    cuda_graph: Optional[bool] = typer.Option(None, "--cuda-graph/--no-cuda-graph", help="Override graph replay.", metavar=""),
    preprocess: Optional[str] = typer.Option(None, help="Override: gpu or cpu."),
    nms: Optional[str] = typer.Option(None, help="Override: auto, triton, torchvision, loop."),
    images: Optional[int] = typer.Option(None, min=1, help="Images per pass (sources cycled or cut); for a video, its frames (default 256)."),
    repeats: int = typer.Option(3, min=1, help="Repeated passes, for spread."),
    sweep: bool = typer.Option(True, "--sweep/--no-sweep", help="Sweep batch sizes.", metavar=""),
    max_batch: Optional[int] = typer.Option(None, help="Largest batch of the sweep (default 256 GPU, 8 CPU)."),
    verify: bool = typer.Option(False, "--verify", help="Apply each recommendation and measure its real gain.", metavar=""),
    out: Path = typer.Option(Path("yolotune-profile"), help="Directory for profile.json, trace.json, report.html."),
    as_json: bool = typer.Option(False, "--json", help="Print the profile JSON to stdout instead of the summary.", metavar=""),
    trust_model: bool = TRUST_MODEL,
) -> None:
    """Profile a pipeline stage by stage, find its bottlenecks, recommend (and with --verify measure) fixes."""
    trust_models(trust_model)
    output_folder(out)
    from yolotune.models import ModelLoadError
    from yolotune.profile import profile
    from yolotune.profile.trace import write_trace
    from yolotune.report.html import write_profile_report
    from yolotune.report.terminal import print_profile

    overrides = dict(batch=batch, precision=precision, cuda_graph=cuda_graph, preprocess=preprocess, nms=nms)
    try:
        with stage_progress("profiling") as say:
            report = profile(model, sources or None, pipeline=pipeline, device=device, images=images, repeats=repeats,
                             sweep=sweep, max_batch=max_batch, verify=verify, progress=say, **overrides)
    except (ModelLoadError, ValueError) as e:
        _fail(str(e))
    result = report.to_dict()
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(result, indent=1))
    write_trace(result, out / "trace.json")
    write_profile_report(result, out / "report.html")
    if as_json:
        print(json.dumps(result))
        return
    print_profile(result, console())
    console().print(f"wrote {out / 'profile.json'}, {out / 'trace.json'} (ui.perfetto.dev), {out / 'report.html'}")


def report_command(
    profile_json: Path = typer.Argument(..., metavar="PROFILE", help="A profile.json that `yolotune profile` wrote."),
    out: Path = typer.Option(Path("yolotune-report"), help="Directory for report.html and trace.json."),
) -> None:
    """Render a saved profile again: the HTML report and the Perfetto trace, as `profile` writes them."""
    output_folder(out)
    from yolotune.profile.trace import write_trace
    from yolotune.report.html import write_profile_report

    try:
        result = json.loads(profile_json.read_text())
    except (OSError, UnicodeDecodeError) as e:
        _fail(f"{profile_json}: cannot be read ({e})")
    except json.JSONDecodeError as e:
        _fail(f"{profile_json}: not a yolotune profile (not JSON: {e})")
    if not isinstance(result, dict) or not {"stages", "e2e", "device"} <= set(result):
        _fail(f"{profile_json}: not a yolotune profile (no stages, e2e or device); give the profile.json that "
              "`yolotune profile` wrote")
    out.mkdir(parents=True, exist_ok=True)
    write_trace(result, out / "trace.json")
    write_profile_report(result, out / "report.html")
    console().print(f"wrote {out / 'report.html'}, {out / 'trace.json'} (ui.perfetto.dev)")


def diagram_command(
    model: str = typer.Argument(..., metavar="MODEL", help="Model: default, Ultralytics .pt / .yaml."),
    out: Path = typer.Option(Path("model.svg"), help="Output .svg or .png."),
    profile_json: Optional[Path] = typer.Option(None, "--profile", help="A profile.json whose layer times paint the blocks."),
    imgsz: int = typer.Option(640, help="Input size for the tensor shapes."),
    trust_model: bool = TRUST_MODEL,
) -> None:
    """Architecture diagram of the model: backbone, neck and head blocks with tensor shapes (and latency)."""
    trust_models(trust_model)
    output_file(out)
    from yolotune.models import ModelLoadError
    from yolotune.report.diagram import write_diagram

    try:
        path = write_diagram(model, out, profile=json.loads(profile_json.read_text()) if profile_json else None, imgsz=imgsz)
    except (ModelLoadError, ValueError) as e:
        _fail(str(e))
    console().print(f"wrote {path}")


def compare_command(
    a: Path = typer.Argument(..., metavar="A", help="Baseline profile.json."),
    b: Path = typer.Argument(..., metavar="B", help="Candidate profile.json."),
    out: Optional[Path] = typer.Option(None, help="Also write an HTML comparison here."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON.", metavar=""),
) -> None:
    """Two profiles side by side: per stage and end to end, changes beyond run-to-run noise flagged."""
    from yolotune.report.compare import compare_profiles, print_comparison, write_comparison_html

    profiles = []
    for path in (a, b):
        try:
            profiles.append(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"{path}: cannot be read ({e})")
        except json.JSONDecodeError as e:
            _fail(f"{path}: not a yolotune profile (not JSON: {e}); give the profile.json that `yolotune profile` wrote")
        try:
            compare_profiles(profiles[-1], profiles[-1])
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            _fail(f"{path}: not a yolotune profile ({type(e).__name__}: {e}); give the profile.json that "
                  f"`yolotune profile` wrote")
    cmp = compare_profiles(*profiles)
    if out:
        write_comparison_html(cmp, out)
    if as_json:
        print(json.dumps(cmp))
    else:
        print_comparison(cmp, console())
