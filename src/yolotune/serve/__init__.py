"""Many streams at once: sources, queues, cross-stream batching, per-stream sinks and metrics."""
