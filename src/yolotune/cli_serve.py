"""The ``run`` (many streams) and ``plan`` (capacity) commands, registered on the main app."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from yolotune.cli_shared import console, EXIT_FAILURES as EXIT_STREAM_FAILURES
from yolotune.cli_shared import (EXIT_OK, GPUS_PER_ACTOR, RAY_ACTORS, TRUST_MODEL, VIDEO_DECODE, err, output_file,
                                 output_folder, stage_progress, stop_on_signals, trust_models)
from yolotune.cli_shared import fail as _fail


def run_command(
    model: str = typer.Argument(..., metavar="MODEL", help="Model: default, .pt / .yaml, .onnx, or an artifact from yolotune optimize."),
    source: list[str] = typer.Option([], "--source", "-s", help="Video file, rtsp/rtmp/http URL, /dev/videoN or "
                                                                "v4l2:N, or a folder watched for new images; "
                                                                "NAME=SOURCE names the stream. Repeat."),
    sources_file: Optional[Path] = typer.Option(None, help="A text file of sources, one per line (SOURCE, NAME=SOURCE "
                                                           "or NAME<tab>SOURCE)."),
    out: Path = typer.Option(Path("yolotune-run"), help="Output folder: <out>/<stream>/detections.jsonl, videos/."),
    formats: list[str] = typer.Option(["jsonl"], "--format", "-f", help="jsonl, video (repeat for both)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    batch: int = typer.Option(16, min=1, help="Largest batch formed across streams."),
    max_wait_ms: float = typer.Option(10.0, min=0.0, help="A batch leaves when its oldest frame has waited this long."),
    queue_size: int = typer.Option(8, min=1, help="Frames buffered per stream (live sources drop the oldest beyond)."),
    duration: Optional[float] = typer.Option(None, help="Stop after this many seconds."),
    loop: bool = typer.Option(False, help="Play video files again from the start when they end.", metavar=""),
    realtime: bool = typer.Option(False, help="Deliver video files at their frame rate, like cameras: frames the "
                                              "pipeline cannot take in time are dropped and counted.", metavar=""),
    lossless: bool = typer.Option(False, help="With --realtime: deliver every frame, late if need be (the lag "
                                              "behind real time grows), instead of dropping like a camera.", metavar=""),
    metrics_port: Optional[int] = typer.Option(None, help="Serve Prometheus metrics on this port (/metrics)."),
    metrics_host: str = typer.Option("127.0.0.1", help="Address /metrics listens on (0.0.0.0: every interface)."),
    dashboard: Optional[bool] = typer.Option(None, "--dashboard/--no-dashboard", help="Live table (default: on a terminal).", metavar=""),
    conf: float = typer.Option(0.25, min=0.0, max=1.0),
    max_retries: Optional[int] = typer.Option(None, help="Reconnect attempts for live sources (default: no limit)."),
    timeout: float = typer.Option(10.0, help="Seconds to wait for a network source to open or deliver."),
    pixel_format: str = typer.Option("auto", help="How decoded frames travel: yuv420p (converted on the GPU, half the "
                                                  "bytes), rgb24 (converted by FFmpeg on the CPU), auto (yuv420p on a GPU)."),
    decoders: str = typer.Option("auto", help="Where sources decode: threads, processes (frames through shared "
                                              "memory; no GIL shared with the engine), auto (processes on a GPU "
                                              "machine with 8+ cores)."),
    decoder_processes: Optional[int] = typer.Option(None, min=1, help="How many decoder processes (default: one per "
                                                                     "core but two, at most one per source)."),
    video_decode: str = VIDEO_DECODE,
    nvdec_streams: Optional[int] = typer.Option(None, min=0, help="Streams NVDEC decodes at most (plan's figure); the "
                                                "rest are decoded on the CPU at the same time (default: every stream "
                                                "NVDEC can take)."),
    nvdec_processes: Optional[int] = typer.Option(None, min=1, help="Decoder processes for NVDEC's streams (default: "
                                                  "a third of the cores, at most one per stream)."),
    runtime_cores: int = typer.Option(2, min=0, help="Cores kept free of decoder processes for the engine thread "
                                                     "and sinks (0: decoders may use every core; ignored where fewer "
                                                     "than 4 would be left to decoders)."),
    watch: bool = typer.Option(False, "--watch", help="Watch --sources-file: a line added starts its stream, a line "
                                                      "taken out stops it (the run goes on until --duration or a "
                                                      "signal).", metavar=""),
    control_port: Optional[int] = typer.Option(None, help="Serve the stream list and add/remove requests on this port "
                                                          "(GET/POST /streams, DELETE /streams/NAME); the run goes on "
                                                          "until --duration or a signal."),
    control_host: str = typer.Option("127.0.0.1", help="Address the control endpoint listens on."),
    json_output: bool = typer.Option(False, "--json", help="Print the summary as JSON.", metavar=""),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Run on Ray (yolotune\\[ray]): local "
                                      "(a cluster on this machine), auto or HEAD:6379 (a running one); streams placed "
                                      "on actors by their measured capacity, moved when one dies."),
    actors: Optional[int] = RAY_ACTORS,
    gpus_per_actor: float = GPUS_PER_ACTOR,
    capacity_fps: Optional[float] = typer.Option(None, min=0.1, help="With --ray: frames/s each actor takes (default: "
                                                 "plan's figure, measured once per GPU type at the first file "
                                                 "source's size and frame rate, else 1280x720 at 30)."),
    trust_model: bool = TRUST_MODEL,
) -> None:
    """Run many streams through one model at once: batched across streams, per-stream outputs and metrics."""
    trust_models(trust_model)
    output_folder(out)
    from yolotune import Detector, ModelLoadError
    from yolotune.serve.runtime import RunOptions, StreamRuntime
    from yolotune.io.stream_specs import name_streams, parse_source, read_source_list

    def parse(text: str, name: str | None = None):
        return parse_source(text, name=name, loop=loop, realtime=realtime, lossless=lossless)

    texts = list(source)
    listed: list[str] = []
    if sources_file is not None:
        try:
            listed = read_source_list(sources_file)
        except OSError as e:
            _fail(f"cannot read --sources-file: {e}")
    elif watch:
        _fail("--watch watches --sources-file: give one")
    texts += listed
    if not texts and not (watch or control_port is not None):
        _fail("no sources: pass --source (repeatable) or --sources-file")
    try:
        specs = name_streams([parse(t) for t in texts])
    except ValueError as e:
        _fail(str(e))
    opts = RunOptions(out=out, formats=tuple(formats), max_batch=batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                      duration_s=duration, metrics_port=metrics_port, metrics_host=metrics_host,
                      open_timeout_s=timeout, read_timeout_s=timeout,
                      max_retries=max_retries, pixel_format=pixel_format, decoders=decoders,
                      decoder_processes=decoder_processes, runtime_cores=runtime_cores,
                      keep_running=watch or control_port is not None, video_decode=video_decode,
                      nvdec_streams=nvdec_streams, nvdec_processes=nvdec_processes)
    # the streams the sources file started, by its lines: what --watch compares its next version with
    started = {line: spec.name for line, spec in zip(texts[len(source):], specs[len(source):])}
    control = _stream_control(sources_file if watch else None, started, parse, control_port, control_host)
    if ray is not None:
        summary = _run_on_ray(model, specs, opts, dict(device=device, batch=batch, conf=conf), ray, actors,
                              gpus_per_actor, capacity_fps, control)
    else:
        try:
            detector = Detector(model, device=device, batch=batch, conf=conf)
            runtime = StreamRuntime(detector, specs, opts)
        except (ModelLoadError, ValueError) as e:
            _fail(str(e))
        show = err.is_terminal and not json_output if dashboard is None else dashboard
        stop_control = control(runtime)
        try:
            with detector:
                if show:
                    from rich.live import Live

                    from yolotune.serve.dashboard import stream_table

                    with Live(stream_table(runtime), console=err, refresh_per_second=2) as live:
                        summary = runtime.run(on_tick=lambda rt: live.update(stream_table(rt)))
                else:
                    summary = runtime.run()
        finally:
            stop_control()
    if json_output:
        sys.stdout.write(json.dumps(summary.to_dict(), indent=2, default=str) + "\n")
    else:
        print_run_summary(summary, console())
    raise typer.Exit(EXIT_STREAM_FAILURES if summary.any_failed else EXIT_OK)


def _stream_control(watched: Path | None, started: dict, parse, port: int | None, host: str):
    """A function that starts what changes the streams while the run goes on (a watched sources file, the control
    endpoint) over a StreamControl, and returns what stops them."""
    from rich.markup import escape

    from yolotune.serve.control import ControlServer, SourcesFileWatcher

    say = lambda message: err.print(escape(message))  # noqa: E731

    def start(streams):
        stoppers = []
        if watched is not None:
            watcher = SourcesFileWatcher(watched, streams, parse, started, on_message=say)
            watcher.start()
            stoppers.append(watcher.stop)
        if port is not None:
            try:
                server = ControlServer(streams, parse, port, host, on_message=say)
            except OSError as e:
                say(f"the control endpoint cannot listen on {host}:{port}: {e}")
            else:
                say(f"control endpoint: http://{host}:{server.port}/streams")
                stoppers.append(server.close)
        return lambda: [stop() for stop in stoppers]

    return start


def _run_on_ray(model, specs, opts, overrides, address, actors, gpus_per_actor, capacity_fps, control):
    """run's streams over a Ray cluster (scale/run.py), SIGINT and SIGTERM ending it cleanly."""
    from yolotune.io.stream_specs import picture_size, source_fps
    from yolotune.scale.cluster import RayUnavailable
    from yolotune.scale.run import ClusterOptions, run_on_ray

    if capacity_fps is not None:
        capacity = {"frames_per_s": capacity_fps}
    else:  # plan's figure at the first file source's size and rate, else a 720p camera's
        first = next((s for s in specs if s.kind == "file" and picture_size(s)), None)
        hw = picture_size(first) if first else (720, 1280)
        size = (hw[1] + hw[1] % 2, hw[0] + hw[0] % 2)
        capacity = {"fps": source_fps(first) if first else 30.0, "resolution": size}
    try:
        with stop_on_signals() as stopped:
            return run_on_ray(model, specs, opts, overrides, ClusterOptions(address, actors, gpus_per_actor,
                                                                            capacity=capacity),
                              stop=stopped, control=control)
    except (RayUnavailable, ValueError) as e:
        _fail(str(e))


def print_run_summary(s, console: Console) -> None:
    """run's summary (a RunSummary): a row per stream, where the latency went, how it stopped."""
    from rich.table import Table

    t = Table(title=f"{len(s.streams)} streams, {s.frames} frames in {s.seconds} s ({s.fps:.1f} frames/s, "
                    f"mean batch {s.mean_batch:.1f}) on {s.device}")
    for col in ("stream", "state", "processed", "dropped", "lost", "outages", "fps", "p50 ms", "p99 ms", "max lag s",
                "error"):
        t.add_column(col)
    f = lambda v: "" if v is None else f"{v:.1f}"  # noqa: E731
    for r in s.streams:
        t.add_row(r.name, r.state, str(r.processed), str(r.dropped), str(r.frames_lost), str(r.outages), f(r.fps),
                  f(r.latency_p50_ms), f(r.latency_p99_ms), f(r.max_lag_s), (r.error or r.last_error or "")[:70])
    console.print(t)
    for a in s.actors:  # run --ray
        console.print(f"actor {a['actor']} ({a['device']}, {a['gpu']}): {a['state']}, {len(a['streams'])} streams, "
                      f"load {a['load_fps']:.0f} of {a['capacity_fps']:.0f} frames/s")
    if s.moves:
        console.print(f"{s.moves} stream moves to another actor (each counted as an outage and a reconnect)")
    if s.latency_parts_ms:
        console.print(f"where the latency goes (p50 / p99): {latency_parts_line(s.latency_parts_ms)}; "
                      f"engine thread: " + ", ".join(f"{k} {v:.1f} s" for k, v in s.engine_thread_s.items()))
    if s.stopped_by:
        console.print(f"stopped by {s.stopped_by}; every output was flushed")
    if s.outputs:
        console.print(f"outputs: {Path(s.outputs[0]).parent.parent}")


def latency_parts_line(parts: dict) -> str:
    """"handover 0.7 / 8.6 ms, queued 5.5 / 19.2 ms, engine 10.1 / 24.4 ms": which part of a slow p99 to look at."""
    return ", ".join(f"{k} {v['p50']:.1f} / {v['p99']:.1f} ms" for k, v in parts.items())


def plan_command(
    model: str = typer.Argument(..., metavar="MODEL", help="Model or artifact directory."),
    fps: Optional[float] = typer.Option(None, min=0.1, help="Frame rate of each stream (default: 30, or the clip's)."),
    resolution: Optional[str] = typer.Option(None, help="Stream resolution WIDTHxHEIGHT (default: 1280x720, or the "
                                             "clip's)."),
    clip: Optional[Path] = typer.Option(None, help="A recording from one of your cameras: every stream is a looped "
                                        "copy of it (default: a generated camera-like clip)."),
    gpus: int = typer.Option(1, min=1, help="Plan for this many GPUs like this one."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, cuda:N."),
    batch: Optional[int] = typer.Option(None, min=1, help="Largest batch (default: the artifact's, else 64 GPU / 8 CPU)."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Run the predicted number of streams to check.", metavar=""),
    seconds: float = typer.Option(20.0, min=1.0, help="Length of each verification run."),
    latency_ms: Optional[float] = typer.Option(None, help="p99 latency budget a verified run must also meet (ms)."),
    max_streams: Optional[int] = typer.Option(None, help="Verify at most this many streams."),
    out: Optional[Path] = typer.Option(None, help="Write the plan as JSON here."),
    json_output: bool = typer.Option(False, "--json", help="Print the plan as JSON.", metavar=""),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Plan a Ray cluster (yolotune\\[ray]): "
                                      "each GPU type measured once, the figures summed, the total verified by "
                                      "running it there; local, auto or HEAD:6379."),
    actors: Optional[int] = RAY_ACTORS,
    gpus_per_actor: float = GPUS_PER_ACTOR,
    trust_model: bool = TRUST_MODEL,
) -> None:
    """How many streams of this resolution and FPS fit (compute, memory with a 20% reserve, decode), verified by running them."""
    from yolotune import ModelLoadError
    from yolotune.serve.plan import plan, planning_detector, recording_problem, recording_stream, resolution_problem

    trust_models(trust_model)
    if out is not None:
        output_file(out)
    if clip is not None:
        if ray is not None:
            _fail("--clip plans one machine: a Ray cluster's nodes measure a generated clip of --resolution")
        try:
            cw, ch, rate = recording_stream(clip)
        except ValueError as e:
            _fail(str(e))
        resolution, fps = resolution or f"{cw}x{ch}", fps or rate
    resolution, fps = resolution or "1280x720", fps or 30.0
    try:
        w, h = (int(v) for v in resolution.lower().split("x"))
    except ValueError:
        _fail(f"--resolution must look like 1280x720, not {resolution!r}")
    if resolution_problem(w, h):
        _fail(f"--{resolution_problem(w, h)}")
    problem = recording_problem(clip, fps, (w, h)) if clip is not None else None
    if problem:  # before the model loads
        _fail(problem)
    if ray is not None:
        return _plan_on_ray(model, fps, (w, h), device, batch, verify, seconds, latency_ms, max_streams, out,
                            json_output, ray, actors, gpus_per_actor)
    try:
        detector = planning_detector(model, device, batch)
    except (ModelLoadError, ValueError) as e:
        _fail(str(e))
    with detector, stage_progress("planning") as say:
        report = plan(detector, fps, (w, h), gpus=gpus, verify=verify, verify_seconds=seconds,
                      latency_budget_ms=latency_ms, max_streams=max_streams, progress=say, clip=clip)
    _write_plan(report.to_dict(), out, json_output, print_plan)


def _write_plan(data: dict, out: Path | None, json_output: bool, show) -> None:
    """A plan's JSON to ``--out``, then as JSON on stdout or shown."""
    if out is not None:
        out.write_text(json.dumps(data, indent=1, default=str))
    if json_output:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        show(data, console())


def _plan_on_ray(model, fps, resolution, device, batch, verify, seconds, latency_ms, max_streams, out, json_output,
                 address, actors, gpus_per_actor) -> None:
    from yolotune.scale.cluster import RayUnavailable
    from yolotune.scale.plan import plan_on_ray
    from yolotune.scale.run import ClusterOptions

    overrides = {"device": device, **({"batch": batch} if batch else {})}
    try:
        with stage_progress("planning the cluster") as say:
            report = plan_on_ray(model, fps, resolution, overrides, ClusterOptions(address, actors, gpus_per_actor),
                                 verify=verify, verify_seconds=seconds, latency_budget_ms=latency_ms,
                                 max_streams=max_streams, progress=say)
    except (RayUnavailable, ValueError) as e:
        _fail(str(e))
    _write_plan(report.to_dict(), out, json_output, print_cluster_plan)


def print_cluster_plan(r: dict, console: Console) -> None:
    from rich.table import Table

    console.print(f"[bold]{r['resolution'][0]}x{r['resolution'][1]} at {r['fps']:g} FPS on {len(r['actors'])} Ray "
                  f"actors: {r['predicted_streams']} streams predicted[/bold]")
    t = Table(title="each actor: its GPU type's figure, measured once per type")
    for col in ("actor", "device", "node", "frames/s", "streams"):
        t.add_column(col)
    for a in r["actors"]:
        t.add_row(a["actor"], f"{a['device']} ({a['gpu']})", (a["node"] or "")[:12], f"{a['capacity_fps']:.0f}",
                  f"{a['streams']:.1f}")
    console.print(t)
    for gpu, c in r["capacities"].items():
        console.print(f"{gpu}: {c['streams_exact']:.1f} streams per actor at batch {c['batch']}, bound by "
                      f"{c['binding'].replace('_', ' ')}")
    for v in r.get("verification", []):
        console.print(verification_line(v))
    if r.get("verified_streams") is not None:
        console.print(f"[bold]verified: {r['verified_streams']} streams[/bold]")


def verification_line(v: dict) -> str:
    """One verification run of plan: held or not, and what it showed."""
    return (f"verified {v['streams']} streams: {'[green]holds' if v['holds'] else '[red]does not hold'}[/] - "
            f"slowest stream {v['min_stream_fps']:.1f} FPS, lag {v['max_lag_s']:.2f} s, {v['dropped']} dropped, "
            f"p50 {v['latency_p50_ms'] or 0:.1f} ms, p99 {v['latency_p99_ms'] or 0:.1f} ms")


def print_plan(r: dict, console: Console) -> None:
    from rich.table import Table

    console.print(f"[bold]{r['resolution'][0]}x{r['resolution'][1]} at {r['fps']:g} FPS on {r['gpus']} x {r['device']}: "
                  f"{r['predicted_streams']} streams predicted[/bold] (bound by {r['binding'].replace('_', ' ')})")
    console.print(f"each stream: {r.get('clip', 'generated, camera-like')}")
    t = Table(title="limits (streams)")
    t.add_column("resource")
    t.add_column("streams", justify="right")
    t.add_column("from")
    mib = lambda b: f"{b / 2**20:.1f} MiB" if b else "n/a"  # noqa: E731
    why = {"compute": f"{r['frames_per_s']:.0f} frames/s at batch {r['batch']}",
           "decode": f"{r['host_pipeline_fps'] or 0:.0f} frames/s decoded and handed over by {r['decode_cores']} cores "
                     f"({r['decode_fps_per_core']:.0f} on one)" + (
                         f" + {r['nvdec']['frames_per_s']:.0f} on NVDEC ({r['nvdec']['engines']} engines)"
                         if r.get("nvdec") else ""),
           "host_memory": f"{mib(r['host_bytes_per_stream'])} per stream, 80% of {mib(r['total_host_bytes'])}",
           "device_memory": f"{mib(r['device_bytes_per_stream'])} per stream, 80% of {mib(r['total_device_bytes'])}"}
    for k, v in r["limits"].items():
        t.add_row(k.replace("_", " "), f"{v:.1f}", why[k])
    console.print(t)
    fit = r.get("one_stream")
    if fit and fit["fps"] is not None:
        console.print(f"[yellow]no stream of {r['fps']:g} FPS fits: one stream fits at up to {fit['fps']:.1f} FPS[/] "
                      f"(bound by {fit['bound_by'].replace('_', ' ')}: {why[fit['bound_by']]}); plan a lower --fps, a "
                      f"smaller model or input, or a GPU")
    elif fit:
        console.print(f"[yellow]not even one stream fits, at any frame rate: bound by {fit['bound_by'].replace('_', ' ')} "
                      f"({why[fit['bound_by']]})[/]")
    for note in r.get("notes", []):
        console.print(f"note: {note}")
    if r.get("nvdec"):
        console.print(f"NVDEC takes {r['nvdec']['streams']} such streams (run --nvdec-streams "
                      f"{r['nvdec']['streams']}); the rest are decoded on the CPU")
    for v in r.get("verification", []):
        console.print(f"{verification_line(v)}, mean batch {v['mean_batch']:.1f}, host memory after warm-up "
                      f"{v['host_rss_growth_mib'] or 0:+.0f} MiB")
        if v.get("latency_parts_ms"):
            console.print(f"  where the latency goes (p50 / p99): {latency_parts_line(v['latency_parts_ms'])}")
    if r.get("host_pipeline_errors"):
        console.print(f"[yellow]the host-side measurement's streams reported: {'; '.join(r['host_pipeline_errors'])}[/]")
    if r.get("verified_streams") is not None:
        console.print(f"[bold]verified: {r['verified_streams']} streams[/bold]")
