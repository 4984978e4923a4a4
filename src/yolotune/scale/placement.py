"""Where streams run: each on the actor with the most room for it, by each actor's measured capacity (frames/s,
plan's figure). Pure functions of loads and capacities, so the rules are tested without a cluster.

An actor's load is the frames/s of its streams. A stream goes where (load + its rate) / capacity is lowest: actors
fill in proportion to their capacity, a faster GPU takes more. Past every actor's capacity streams are still placed
(the least overloaded first); the summary says the cluster is over capacity.
"""

from __future__ import annotations

from typing import Hashable

Actor = Hashable


def choose(loads: dict[Actor, float], capacities: dict[Actor, float], rate: float) -> Actor | None:
    """The actor that takes a stream of ``rate`` frames/s with the lowest share of its capacity used after (ties:
    the first); None when there is no actor."""
    if not loads:
        return None
    return min(loads, key=lambda a: (loads[a] + rate) / max(capacities.get(a, 0.0), 1e-9))


def place_all(rates: dict[str, float], loads: dict[Actor, float], capacities: dict[Actor, float]) -> dict[str, Actor]:
    """Streams (name -> frames/s) onto actors, the busiest streams first; ``loads`` is updated as they are placed."""
    placed: dict[str, Actor] = {}
    for name in sorted(rates, key=lambda n: (-rates[n], n)):
        actor = choose(loads, capacities, rates[name])
        if actor is None:
            break
        loads[actor] += rates[name]
        placed[name] = actor
    return placed


def rebalance(assigned: dict[str, Actor], rates: dict[str, float], capacities: dict[Actor, float]) -> dict[str, Actor]:
    """Moves (stream -> new actor) that bring actors over capacity back within it, onto actors with room (one that
    has just started, say), the smallest streams first so that as few frames as possible wait; a move is made only
    where the stream fits within its new actor's capacity. Actors with no capacity known are left alone."""
    loads = {a: 0.0 for a in capacities}
    for name, actor in assigned.items():
        if actor in loads:
            loads[actor] += rates[name]
    moves: dict[str, Actor] = {}
    for actor in sorted(loads, key=lambda a: loads[a] - capacities[a], reverse=True):
        for name in sorted((n for n, a in assigned.items() if a == actor), key=lambda n: (rates[n], n)):
            if loads[actor] <= capacities[actor]:
                break
            room = {a: capacities[a] - loads[a] for a in loads if a != actor}
            target = max(room, key=room.get, default=None)
            if target is None or room[target] < rates[name]:
                break
            loads[actor] -= rates[name]
            loads[target] += rates[name]
            moves[name] = target
    return moves
