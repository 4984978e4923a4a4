"""Generated data: sample images and clips (no downloads anywhere)."""
