"""`yolotune optimize` with its defaults (120 s budget) on the default model, each step's start time printed; the
report (without the artifact's model and caches) and the wall time go to $OUT/optimize_default/. Then RELOADS (3)
fresh processes load the artifact, step by step (benchmarks/reload_diag.py's child), the first right after optimize.
OBJECTIVE=latency runs the batch-1 objective instead."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment  # noqa: E402

from yolotune.tune.search import optimize  # noqa: E402


def main() -> None:
    out = Path(os.environ.get("OUT") or tempfile.mkdtemp()) / "optimize_default"
    art = Path(tempfile.mkdtemp(prefix="optimize-default-")) / "art"
    t0 = time.perf_counter()
    steps = []

    def say(msg: str) -> None:
        steps.append((round(time.perf_counter() - t0, 1), msg))
        print(f"[{steps[-1][0]:7.1f} s] {msg}", flush=True)

    # OBJECTIVE=latency: the batch-1 objective instead of throughput (everything else default)
    report = optimize("default", out=art, progress=say, objective=os.environ.get("OBJECTIVE", "throughput")).to_dict()
    wall = time.perf_counter() - t0
    # what production sees: the saved artifact loaded by fresh processes, the first right after optimize
    from reload_diag import fresh

    reloads = [fresh(art, {}, {"FULL_BATCH": "1"}) for _ in range(int(os.environ.get("RELOADS", "3")))]
    for r in reloads:
        print("fresh-process reload", json.dumps(r), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("report.json", "report.md"):
        shutil.copy(art / name, out / name)
    (out / "run.json").write_text(json.dumps({"env": environment(), "wall_s": round(wall, 1), "steps": steps,
                                              "search_s": report.get("search_s"), "reload_s": report.get("reload_s"),
                                              "chosen": report.get("chosen", {}).get("name"),
                                              "fresh_process_reloads": reloads}, indent=1))
    print(report.get("summary"), f"wall {wall:.1f} s, search {report.get('search_s')} s, reload {report.get('reload_s')} s")


if __name__ == "__main__":
    main()
