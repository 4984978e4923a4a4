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
