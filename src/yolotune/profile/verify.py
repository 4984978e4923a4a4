"""``--verify``: apply each recommendation through the Detector's own options and measure the real gain."""

from __future__ import annotations

from typing import Callable

from yolotune.options import DetectorOptions
from yolotune.profile.end_to_end import measure_end_to_end


def verify_findings(model: str, device: str, base: DetectorOptions, profile: dict, paths: list[str], repeats: int,
                    say: Callable[[str], None]) -> list[dict]:
    """For every finding with options (and all of them together): images/s with those options vs the profile's
    end-to-end run, predicted vs measured gain."""
    from yolotune.pipeline.detector import Detector

    base_rate = profile["e2e"]["images_per_s"]
    rows: list[dict] = []
    candidates = [(f["kind"], f["options"], f["predicted_gain"]) for f in profile["findings"] if f["options"]]
    if len(candidates) > 1:
        merged: dict = {}
        for _, o, _ in candidates:
            merged.update(o)
        candidates.append(("all", merged, None))
    for kind, options, predicted in candidates:
        say(f"verify {kind}: {options}")
        try:
            with Detector(model, base.merged(options).replace(device=device)) as det:
                measure_end_to_end(det, paths[: det.batch * 2], 1)  # warm-up: graph capture, autotuning
                e2e = measure_end_to_end(det, paths, repeats)
        except Exception as e:  # a recommendation that cannot run here is reported, not fatal
            rows.append({"kind": kind, "options": options, "predicted_gain": predicted, "error": f"{type(e).__name__}: {e}"})
            continue
        rows.append({"kind": kind, "options": options, "predicted_gain": predicted,
                     "images_per_s": e2e["images_per_s"], "std": e2e["std"],
                     "measured_gain": e2e["images_per_s"] / base_rate if base_rate else None})
    return rows
