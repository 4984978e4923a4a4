"""The stream controller: a Ray actor that places streams on stream actors (scale/stream_actor.py) by each one's
measured capacity, moves the streams of an actor or node that dies to the survivors, and hands each record to the
driver once.

A thread of its own drains every actor a few times a second. A call that fails (the actor's process or node died)
or that goes unanswered for ``dead_after_s`` marks the actor down: its streams go to the survivors at once
(scale/placement.py), each from the frame after the last one whose record reached the controller, so a file stream
loses no frame and repeats none (records of frames at or before that are dropped). A move counts as a reconnect of
the stream and is recorded in its output. Ray restarts a dead actor (``max_restarts``): when it answers again, it
takes new streams, and streams of actors over capacity move to it. Placement, restarts and scheduling are Ray's;
this is bookkeeping.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time

from yolotune.io.stream_sinks import event_row
from yolotune.io.stream_specs import SourceSpec, name_streams, source_fps
from yolotune.scale.placement import place_all, rebalance
from yolotune.scale.roster import ENDED, SUMMED, ActorSlot, StreamEntry, ray_error_reason
from yolotune.scale.stream_actor import StreamActor


class StreamController:
    """Created by the driver as a Ray actor (scale/run.py), or as a plain object in the driver for tests."""

    def __init__(self, model: str, overrides: dict, run_options: dict, actors: int, resources: dict,
                 capacity: dict, tick_s: float = 0.25, dead_after_s: float = 5.0, keep_running: bool = False,
                 prefix: str = "yolotune-streams"):
        self.model, self.overrides, self.run_options = model, overrides, run_options
        self.n_actors, self.resources, self.capacity_request = actors, resources, capacity
        self.tick_s, self.dead_after_s, self.keep_running, self.prefix = tick_s, dead_after_s, keep_running, prefix
        self.actors: list[ActorSlot] = []
        self.streams: dict[str, StreamEntry] = {}
        self.outbox: list[tuple[str, dict]] = []
        self.capacities: dict[str, dict] = {}  # GPU type -> StreamActor.capacity(), measured once per type
        self.moves = 0
        self.want_metrics = False
        self.last_error: str | None = None  # the watcher's last surprise, if any
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self._monitor: threading.Thread | None = None
        self._ticks = 0

    # ------------------------------------------------------------------------------------------------ start
    def start(self, want_metrics: bool = False) -> list[dict]:
        """Start the stream actors, wait for them, measure each GPU type's capacity once; then watch them."""
        import ray

        self.want_metrics = want_metrics
        remote = ray.remote(StreamActor)
        for i in range(self.n_actors):
            handle = remote.options(name=f"{self.prefix}-{i}", max_restarts=-1, max_task_retries=0,
                                    max_concurrency=4, **self.resources).remote(self.model, self.overrides,
                                                                                self.run_options)
            self.actors.append(ActorSlot(i, handle))
        infos = ray.get([a.handle.ready.remote() for a in self.actors])
        for a, info in zip(self.actors, infos):
            self._up(a, info)
        self._monitor = threading.Thread(target=self._watch, name="yolotune-controller", daemon=True)
        self._monitor.start()
        return self.actor_list()

    def _capacity_of(self, a: ActorSlot) -> float:
        """Frames/s this actor takes: given, or plan's figure for its GPU type (measured on the first of its type)."""
        import ray

        req = self.capacity_request
        if req.get("frames_per_s"):
            return float(req["frames_per_s"])
        gpu = a.info.get("gpu", "?")
        if gpu not in self.capacities:
            self.capacities[gpu] = ray.get(a.handle.capacity.remote(req["fps"], tuple(req["resolution"])))
        # actors that share a GPU (num_gpus 0.5) each take their share of what one measured alone
        return float(self.capacities[gpu]["frames_per_s"]) * min(1.0, self.resources.get("num_gpus") or 1.0)

    def _up(self, a: ActorSlot, info: dict) -> None:
        a.info, a.name, a.pending, a.draining = info, info["actor"], None, None
        a.capacity_fps = self._capacity_of(a)
        with self.lock:
            a.state = "up"
            self._place_waiting()
            self._rebalance()

    # ------------------------------------------------------------------------------------------------ streams
    def add_stream(self, spec: SourceSpec, clip: tuple | None = None) -> str:
        """Place ``spec`` on the actor with the most room; its name (a default one made unique)."""
        return self.add_streams([spec], clip)[0]

    def add_streams(self, specs: list[SourceSpec], clip: tuple | None = None) -> list[str]:
        """Place every spec, each actor's share sent in one call: an actor that has not started its runtime yet
        prepares for all of them (rings, graphs) before any clock runs."""
        with self.lock:
            names = []
            for spec in specs:
                running = {n.lower() for n, e in self.streams.items() if not e.done}
                if spec.named or not spec.name or spec.name.lower() in running:
                    name_streams([spec], running)
                rate = clip[2] if clip else source_fps(spec)
                self.streams[spec.name] = StreamEntry(spec, rate, clip)
                names.append(spec.name)
            self._place_waiting()
            return names

    def remove_stream(self, name: str) -> None:
        with self.lock:
            e = self.streams.get(name)
            if e is None or e.done:
                raise KeyError(f"no stream {name!r} is running")
            if e.actor is None:  # not placed yet: nothing runs
                e.done, e.counts = True, {**e.counts, "state": "removed"}
                self.outbox.append((name, event_row(name, "removed", "removed while running")))
                return
            self.actors[e.actor].handle.remove.remote(name)  # its "removed" event comes with its records

    def stream_list(self) -> list[dict]:
        with self.lock:
            return [{"name": n, "source": e.spec.uri, "kind": e.spec.kind, "state": self._state(e),
                     "actor": self.actors[e.actor].name if e.actor is not None else None,
                     "processed": e.last_frame + 1 if e.last_frame >= 0 else 0, "moves": e.moves}
                    for n, e in self.streams.items()]

    def _state(self, e: StreamEntry) -> str:
        return e.counts.get("state", "starting") if e.actor is not None or e.done else "waiting for an actor"

    def _loads(self) -> dict[int, float]:
        loads = {a.index: 0.0 for a in self.actors if a.state == "up"}
        for e in self.streams.values():
            if e.actor in loads and not e.done:
                loads[e.actor] += e.rate
        return loads

    def _place_waiting(self) -> None:
        """Streams not on any actor (new, or their actor died) onto the actors up, the busiest streams first."""
        waiting = {n: e.rate for n, e in self.streams.items() if e.actor is None and not e.done}
        placed = place_all(waiting, self._loads(), {a.index: a.capacity_fps for a in self.actors})
        for name, target in placed.items():
            self.streams[name].actor = target
        self._send(list(placed))

    def _send(self, names: list[str]) -> None:
        """Start ``names`` on the actors they were placed on: one add_many call per actor."""
        by_actor: dict[int, list[str]] = {}
        for name in names:
            by_actor.setdefault(self.streams[name].actor, []).append(name)
        for index, mine in by_actor.items():
            a = self.actors[index]
            items = []
            for name in mine:
                e = self.streams[name]
                e.counts = {}
                start = e.last_frame + 1 if e.last_frame >= 0 else e.spec.start_frame
                items.append((dataclasses.replace(e.spec, start_frame=start), e.clip))
                if e.why:
                    self.outbox.append((name, event_row(name, "moved", f"{e.why}: continues on actor {a.name} from "
                                                                       f"frame {start}")))
                    e.why = None
            ref = a.handle.add_many.remote(items)
            for k, name in enumerate(mine):
                self.streams[name].adding = (ref, k)

    def _rebalance(self) -> None:
        assigned = {n: e.actor for n, e in self.streams.items() if e.actor is not None and not e.done}
        capacities = {a.index: a.capacity_fps for a in self.actors if a.state == "up"}
        moves = rebalance(assigned, {n: e.rate for n, e in self.streams.items()}, capacities)
        for name, target in moves.items():
            e = self.streams[name]
            old = self.actors[e.actor]
            old.handle.remove.remote(name)
            self._moved(e, f"actor {old.name} over its capacity ({old.capacity_fps:.0f} frames/s)")
            e.actor = target
        self._send(list(moves))

    def _moved(self, e: StreamEntry, why: str) -> None:
        """Off its actor: its counts so far kept; it waits for an actor (_send records where it goes on)."""
        for k in SUMMED:
            e.earlier[k] = e.earlier.get(k, 0) + e.counts.get(k, 0)
        e.counts, e.actor, e.adding, e.why = {}, None, None, why
        e.moves += 1
        self.moves += 1

    # ------------------------------------------------------------------------------------------------ watching
    def _watch(self) -> None:
        while not self.stopping.is_set():
            t0 = time.perf_counter()
            try:
                self._tick()
            except Exception as e:  # noqa: BLE001  (the controller must outlive any one bad answer)
                with self.lock:
                    self.last_error = f"{type(e).__name__}: {e}"
            self.stopping.wait(max(0.0, self.tick_s - (time.perf_counter() - t0)))

    def _tick(self) -> None:
        import ray

        self._ticks += 1
        metrics = self.want_metrics and self._ticks % 8 == 1
        up = [a for a in self.actors if a.state == "up"]
        now = time.perf_counter()
        for a in up:
            if a.draining is None:
                a.draining, a.drain_since = a.handle.drain.remote(metrics), now
        refs = [a.draining for a in up]
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=self.tick_s) if refs else ([], [])
        done = set(done)
        now = time.perf_counter()
        for a in up:
            if a.draining in done:
                self._drained(a, a.draining)
            elif now - a.drain_since >= self.dead_after_s:
                self._lost(a, f"no answer for {self.dead_after_s:g} s")
        self._check_adds()
        self._revive()

    def _drained(self, a: ActorSlot, ref) -> None:
        """Actor ``a``'s answer to a drain: its records and counts, or the news that it is gone."""
        import ray

        a.draining = None
        try:
            update = ray.get(ref)
        except ray.exceptions.RayError as e:
            self._lost(a, ray_error_reason(e))
            return
        if update["actor"] != a.name:  # Ray restarted it between two drains: the old one is gone
            self._lost(a, "its process was restarted")
            return
        self._absorb(a, update)

    def _absorb(self, a: ActorSlot, update: dict) -> None:
        with self.lock:
            for name, row in update["records"]:
                e = self.streams.get(name)
                if e is None or e.actor != a.index:  # it moved away: the old actor's late records are not its
                    continue
                if "frame" in row:
                    if row["frame"] <= e.last_frame:
                        continue
                    e.last_frame = row["frame"]
                self.outbox.append((name, row))
            for name, counts in update["streams"].items():
                e = self.streams.get(name)
                if e is None or e.actor != a.index:
                    if counts["state"] not in ENDED:  # running here but placed elsewhere: stop it here
                        a.handle.remove.remote(name)
                    continue
                e.counts = counts
                if counts["state"] in ENDED:
                    e.done = True
            a.batches, a.engine_errors = update["batches"], update["engine_errors"]
            a.metrics = update["metrics"] or a.metrics
            a.last = {k: update[k] for k in ("pixel_format", "decoders", "last_engine_error", "running")}

    def _lost(self, a: ActorSlot, why: str) -> None:
        """Actor ``a`` is gone: its streams go to the survivors now (or wait for one)."""
        with self.lock:
            if a.state == "down":
                return
            a.state, a.metrics, a.draining = "down", None, None
            mine = [n for n, e in self.streams.items() if e.actor == a.index and not e.done]
            for name in mine:
                self._moved(self.streams[name], f"actor {a.name} lost ({why})")
            a.pending = a.handle.ready.remote()  # answers once Ray has it up again
            self._place_waiting()
            for name in mine:
                e = self.streams[name]
                if e.actor is None:
                    self.outbox.append((name, event_row(name, "reconnecting", f"{e.why}: no actor left to take "
                                                                              "it; it waits for one")))

    def _check_adds(self) -> None:
        """An add that failed on its actor: the stream's error record."""
        import ray

        with self.lock:
            adding = [(n, e) for n, e in self.streams.items() if e.adding is not None]
        for name, e in adding:
            ref, k = e.adding
            ready, _ = ray.wait([ref], timeout=0)
            if not ready:
                continue
            e.adding = None
            try:
                error = ray.get(ref)[k]
            except ray.exceptions.RayError:
                continue  # its actor died: _lost moves the stream
            if error is not None:  # the actor refused it: that stream's error
                with self.lock:
                    e.done, e.counts = True, {**e.counts, "state": "failed", "error": error}
                    self.outbox.append((name, event_row(name, "failed", f"could not start: {error}")))

    def _revive(self) -> None:
        """Actors Ray restarted: up again once they answer (new streams and rebalancing go to them)."""
        import ray

        for a in self.actors:
            if a.state != "down" or a.pending is None:
                continue
            ready, _ = ray.wait([a.pending], timeout=0)
            if not ready:
                continue
            try:
                self._up(a, ray.get(a.pending))
            except ray.exceptions.RayError:
                a.pending = a.handle.ready.remote()

    # ------------------------------------------------------------------------------------------------ driver
    def poll(self) -> dict:
        """Records since the last poll (each once, in frame order per stream), every stream's state and counts (summed
        over the actors it ran on, moves counted as reconnects), the actors, and their metrics."""
        with self.lock:
            records, self.outbox = self.outbox, []
            streams = {name: {**e.summed(), "name": name, "state": self._state(e),
                              "actor": self.actors[e.actor].name if e.actor is not None else None}
                       for name, e in self.streams.items()}
            running = sum(1 for e in self.streams.values() if not e.done)
            return {"records": records, "streams": streams, "actors": self.actor_list(), "moves": self.moves,
                    "last_error": self.last_error,
                    "running": running, "finished": not self.keep_running and running == 0 and bool(self.streams),
                    "metrics": {a.name: a.metrics for a in self.actors if a.state == "up" and a.metrics},
                    "capacities": self.capacities}

    def actor_list(self) -> list[dict]:
        with self.lock:
            loads = self._loads()
            return [{"actor": a.name, "index": a.index, "ray_name": f"{self.prefix}-{a.index}", "state": a.state,
                     "device": a.info.get("device"),
                     "gpu": a.info.get("gpu"), "node": a.info.get("node"), "capacity_fps": round(a.capacity_fps, 1),
                     "load_fps": round(loads.get(a.index, 0.0), 1), "batches": a.batches,
                     "engine_errors": a.engine_errors, "streams": sorted(n for n, e in self.streams.items()
                                                                         if e.actor == a.index and not e.done),
                     **a.last} for a in self.actors]

    def end_streams(self, timeout_s: float = 30.0, fresh: bool = False) -> dict:
        """Remove every stream and wait (up to ``timeout_s``) until each has ended; the actors stay up for more
        (``fresh``: each with a new runtime). The last records and counts."""
        import ray

        with self.lock:
            names = [n for n, e in self.streams.items() if not e.done]
        for name in names:
            with contextlib.suppress(KeyError):  # it ended meanwhile
                self.remove_stream(name)
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline and any(not e.done for e in self.streams.values()):
            time.sleep(self.tick_s)
        if fresh:
            up = [a for a in self.actors if a.state == "up"]
            refs = [a.handle.fresh_runtime.remote() for a in up]
            ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        final = self.poll()
        with self.lock:  # the next run starts with none of these
            self.streams = {n: e for n, e in self.streams.items() if not e.done}
        return final

    def stop(self) -> dict:
        """Stop watching and every actor's streams; the last records and counts (again, if stopped already)."""
        import ray

        if self.stopping.is_set():
            return self.poll()
        self.stopping.set()
        if self._monitor is not None:
            self._monitor.join(timeout=10)
        draining = [a for a in self.actors if a.state == "up" and a.draining is not None]
        if draining:  # their records are taken from the actors already: wait for them
            ready, _ = ray.wait([a.draining for a in draining], num_returns=len(draining), timeout=self.dead_after_s)
            for a in draining:
                if a.draining in ready:
                    self._drained(a, a.draining)
                else:
                    a.state = "down"  # silent at the end: nothing to move its streams for
        up = [a for a in self.actors if a.state == "up"]
        refs = {a.handle.stop.remote(): a for a in up}
        done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=60) if refs else ([], [])
        for ref in done:
            try:
                self._absorb(refs[ref], ray.get(ref))
            except ray.exceptions.RayError as e:
                self._lost(refs[ref], ray_error_reason(e))
        return self.poll()

