"""Where streams go on a cluster: by each actor's capacity, busiest first, and back within capacity when an actor
comes (back) up (no Ray needed)."""

from yolotune.scale.placement import choose, place_all, rebalance


def test_streams_fill_actors_in_proportion_to_their_capacity():
    loads = {"h200": 0.0, "l4": 0.0}
    placed = place_all({f"cam{i}": 30.0 for i in range(12)}, loads, {"h200": 900.0, "l4": 300.0})
    counts = {a: sum(1 for v in placed.values() if v == a) for a in loads}
    assert counts == {"h200": 9, "l4": 3} and loads == {"h200": 270.0, "l4": 90.0}


def test_the_busiest_streams_go_first_and_past_capacity_the_least_overloaded_takes_more():
    loads = {"a": 0.0, "b": 0.0}
    placed = place_all({"slow": 5.0, "fast": 60.0, "mid": 30.0}, loads, {"a": 50.0, "b": 50.0})
    assert placed["fast"] == "a" and placed["mid"] == "b" and placed["slow"] == "b"
    assert choose({"a": 100.0, "b": 55.0}, {"a": 50.0, "b": 50.0}, 10.0) == "b"  # both over: the less overloaded
    assert choose({}, {}, 10.0) is None


def test_an_actor_back_up_takes_the_overload_of_the_others_smallest_streams_first():
    rates = {"s1": 10.0, "s2": 10.0, "s3": 10.0, "s4": 40.0}
    assigned = {n: "a" for n in rates}  # 70 frames/s on an actor that takes 50: "b" just came back empty
    moves = rebalance(assigned, rates, {"a": 50.0, "b": 50.0})
    assert moves == {"s1": "b", "s2": "b"}
    assert rebalance({"s1": "a"}, {"s1": 10.0}, {"a": 50.0, "b": 50.0}) == {}  # nobody over: nothing moves
    assert rebalance({"s4": "a"}, {"s4": 40.0}, {"a": 30.0, "b": 35.0}) == {}  # it would not fit there either


class _Remote:
    def __init__(self, fn):
        self.remote = fn


class SlowStartController:
    """A controller whose actor takes a few polls to get its streams going (rings and graphs made first)."""

    def __init__(self, polls_before_running: int):
        self.polls, self.before = 0, polls_before_running
        self.add_streams = _Remote(lambda specs, clip=None: [s.name for s in specs])
        self.poll = _Remote(self._poll)
        self.stop = _Remote(lambda: {**self._poll(), "records": []})

    def _poll(self) -> dict:
        self.polls += 1
        running = self.polls > self.before
        actor = {"actor": "a:1", "index": 0, "state": "up", "device": "cpu", "gpu": "CPU", "capacity_fps": 30.0,
                 "load_fps": 10.0, "batches": self.polls, "engine_errors": 0, "streams": ["s"], "running": running,
                 "decoders": "threads", "pixel_format": "rgb24", "last_engine_error": None}
        records = [("s", {"stream": "s", "frame": self.polls, "latency_ms": 5.0, "detections": []})] if running else []
        return {"records": records, "actors": [actor], "moves": 0, "finished": False, "metrics": {}, "capacities": {},
                "streams": {"s": {"name": "s", "state": "running" if running else "starting", "source": "x",
                                  "kind": "file", "moves": 0, "actor": "a:1"}}}


def test_a_runs_duration_counts_from_when_its_streams_run_not_from_their_start_up():
    from yolotune.io.stream_specs import SourceSpec
    from yolotune.scale.run import drive
    from yolotune.serve.runtime import RunOptions

    fake_ray = type("FakeRay", (), {"get": staticmethod(lambda x: x)})
    controller = SlowStartController(polls_before_running=8)  # two seconds of start-up at 4 polls a second
    summary = drive(fake_ray, controller, [SourceSpec("x", "file", "s")], RunOptions(out=None, duration_s=1.0))
    assert summary.stopped_by == "duration" and summary.frames >= 3  # it ran its second once running
    assert 1.0 <= summary.seconds < 1.8
