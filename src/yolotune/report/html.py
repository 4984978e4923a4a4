"""Self-contained HTML report of a profile (placeholder until plots land)."""
from __future__ import annotations
import html, json
from pathlib import Path

def write_profile_report(p: dict, path) -> Path:
    path = Path(path)
    path.write_text("<html><body><pre>" + html.escape(json.dumps(p.get("findings"), indent=1)) + "</pre></body></html>")
    return path
