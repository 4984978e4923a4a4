"""Edges of the pipeline: where inputs come from (sources, decode, video) and where results go (sinks)."""
