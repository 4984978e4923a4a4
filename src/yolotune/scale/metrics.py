"""One /metrics for a cluster run: every stream actor's own metrics (serve/metrics.py) with an ``actor`` label, and
the cluster's: actors up, their capacity and load, streams moved."""

from __future__ import annotations

import threading


class ClusterMetrics:
    """A prometheus-client collector over the controller's last poll; ``serve`` puts it on HTTP."""

    def __init__(self):
        from prometheus_client import CollectorRegistry

        self._lock = threading.Lock()
        self._texts: dict[str, str] = {}
        self._actors: list[dict] = []
        self._streams: dict[str, dict] = {}
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.port: int | None = None
        self._server = None

    def update(self, poll: dict) -> None:
        """The controller's poll (scale/controller.StreamController.poll): actors that are down drop out."""
        with self._lock:
            up = {a["actor"] for a in poll["actors"] if a["state"] == "up"}
            self._texts = {k: v for k, v in {**self._texts, **poll["metrics"]}.items() if k in up}
            self._actors, self._streams = poll["actors"], poll["streams"]

    def collect(self):
        from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
        from prometheus_client.parser import text_string_to_metric_families
        from prometheus_client.samples import Sample

        with self._lock:
            texts, actors, streams = dict(self._texts), list(self._actors), dict(self._streams)
        families: dict[str, Metric] = {}
        for actor, text in sorted(texts.items()):
            for family in text_string_to_metric_families(text):
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                merged.samples += [Sample(s.name, {**s.labels, "actor": actor}, s.value, s.timestamp, s.exemplar)
                                   for s in family.samples]
        yield from families.values()
        up = GaugeMetricFamily("yolotune_actor_up", "1 while the stream actor answers", labels=["actor", "device"])
        capacity = GaugeMetricFamily("yolotune_actor_capacity_fps", "Frames/s the actor takes (plan's figure)",
                                     labels=["actor"])
        load = GaugeMetricFamily("yolotune_actor_load_fps", "Frames/s of the streams placed on the actor",
                                 labels=["actor"])
        for a in actors:
            name = a["actor"] or f"actor-{a['index']}"
            up.add_metric([name, a.get("device") or ""], 1.0 if a["state"] == "up" else 0.0)
            capacity.add_metric([name], a["capacity_fps"])
            load.add_metric([name], a["load_fps"])
        moves = CounterMetricFamily("yolotune_stream_moves", "Times a stream moved to another actor",
                                    labels=["stream", "actor"])
        for name, s in streams.items():
            moves.add_metric([name, s.get("actor") or ""], s.get("moves", 0))
        yield from (up, capacity, load, moves)

    def serve(self, port: int, addr: str = "127.0.0.1") -> None:
        from yolotune.serve.metrics import serve_registry

        self._server, self.port = serve_registry(self.registry, port, addr), port

    def close(self) -> None:
        from yolotune.serve.metrics import close_server

        close_server(self._server)
        self._server = None

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
