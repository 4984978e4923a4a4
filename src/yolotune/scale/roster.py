"""The controller's records of its stream actors and streams (scale/controller.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from yolotune.io.stream_specs import SourceSpec

# counts that add up over the actors a stream ran on (serve/summary.stream_counts)
SUMMED = ("received", "decoded", "processed", "dropped", "dropped_before_decode", "frames_lost", "outages",
          "reconnects", "reconnect_attempts", "detections")
ENDED = ("finished", "failed", "never-connected", "removed")


@dataclass
class ActorSlot:
    index: int
    handle: object
    name: str = ""  # host:pid of the incarnation that answers now
    state: str = "starting"  # starting, up, down
    info: dict = field(default_factory=dict)  # StreamActor.ready()
    capacity_fps: float = 0.0
    pending: object = None  # a ready() call in flight while down
    draining: object = None  # the drain() call in flight: one at a time, its records taken once it answers
    drain_since: float = 0.0
    batches: int = 0
    engine_errors: int = 0
    metrics: str | None = None
    last: dict = field(default_factory=dict)  # its last drain's other fields


@dataclass
class StreamEntry:
    spec: SourceSpec
    rate: float  # frames/s: its load on an actor
    clip: tuple | None = None  # a generated clip made on the actor's node (plan's verification)
    actor: int | None = None  # the slot it runs on; None: waiting for one
    last_frame: int = -1  # the last frame whose record was handed on
    moves: int = 0
    done: bool = False
    counts: dict = field(default_factory=dict)  # from the actor it runs on now
    earlier: dict = field(default_factory=dict)  # summed over the actors it ran on before
    adding: tuple | None = None  # (the add_many() call in flight, this stream's place in it)
    why: str | None = None  # why it left its last actor: said in the record of where it continues

    def summed(self) -> dict:
        """Its counts over every actor it ran on, each move counted as an outage and a reconnect."""
        counts = {**self.counts, "source": self.spec.uri, "kind": self.spec.kind, "moves": self.moves}
        for k in SUMMED:
            counts[k] = self.earlier.get(k, 0) + self.counts.get(k, 0)
        counts["reconnects"] += self.moves
        counts["outages"] += self.moves
        return counts


def ray_error_reason(error: Exception) -> str:
    """A Ray error in a few words: its first line."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200]}" if text else type(error).__name__
