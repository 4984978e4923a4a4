"""The live terminal view of ``yolotune run`` (rich): one row per stream, totals in the caption."""

from __future__ import annotations

from rich.table import Table

STATE_STYLE = {"running": "green", "reconnecting": "yellow", "failed": "red", "never-connected": "red",
               "finished": "cyan", "stopped": "dim"}


def stream_table(rt) -> Table:
    """A table of the runtime's streams now: state, FPS (last 5 s), latency p50/p99, lag behind real time, queue
    depth, drops, outages, the current error."""
    total_fps = sum(s.fps for s in rt.stats)
    gpu = ""
    nvml = getattr(rt, "_nvml", None)
    if nvml is not None and nvml.series.gpu_util:
        gpu = f", GPU {nvml.series.gpu_util[-1]:.0f}%"
    t = Table(title=f"yolotune run: {len(rt.specs)} streams, {total_fps:.0f} frames/s, {rt.batches} batches{gpu}",
              caption="Ctrl-C stops and flushes every output", expand=False)
    for col in ("stream", "state", "fps", "p50 ms", "p99 ms", "lag s", "queue", "dropped", "outages", "error"):
        t.add_column(col, justify="left" if col in ("stream", "state", "error") else "right")
    rows = list(zip(rt.specs, rt.stats, rt.queues, rt.workers))
    for spec, st, q, w in rows[:40]:
        p50, p99 = st.percentile_ms(50), st.percentile_ms(99)
        state = w.status.state
        t.add_row(spec.name, f"[{STATE_STYLE.get(state, '')}]{state}", f"{st.fps:.1f}",
                  "" if p50 is None else f"{p50:.1f}", "" if p99 is None else f"{p99:.1f}", f"{w.status.lag_s:.1f}",
                  str(len(q)), str(q.dropped + w.status.dropped), str(w.status.outages), (w.status.error or "")[:60])
    if len(rows) > 40:
        t.add_row(f"... {len(rows) - 40} more", *[""] * 9)
    return t
