"""Joining a Ray cluster: a local one on this machine, or a running one; placement and retries are Ray's."""

from __future__ import annotations

import contextlib
from typing import Iterator

INSTALL_HINT = "pip install 'yolotune[ray]'"


class RayUnavailable(RuntimeError):
    """Ray is not installed, or the cluster cannot be reached; the message says which and what to do."""


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise RayUnavailable(f"--ray needs Ray ({INSTALL_HINT}): {e}") from None
    return ray


@contextlib.contextmanager
def connected(address: str, num_cpus: int | None = None) -> Iterator[object]:
    """Ray, connected for the block: ``local`` starts a cluster on this machine (``num_cpus`` for it, default all)
    and stops it after; ``auto`` or HOST:PORT joins a running one (``ray start --head`` on the head node)."""
    ray = import_ray()
    already = ray.is_initialized()
    if not already:
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            if address == "local":
                ray.init(num_cpus=num_cpus, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayUnavailable(f"cannot reach the Ray cluster at {address!r}: {e}; start one with "
                                 "`ray start --head`, or give --ray local") from None
    try:
        yield ray
    finally:
        if not already:
            ray.shutdown()


def plan_actors(ray, device: str, actors: int | None, gpus_per_actor: float) -> tuple[int, dict]:
    """How many Detector actors and the resources each asks for: one per GPU in the cluster (or ``1 /
    gpus_per_actor`` per GPU), else on a CPU cluster one per node with that node's CPUs; ``actors`` overrides
    the count."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    use_gpu = gpus > 0 and device != "cpu"
    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cpus = min(int(node["Resources"].get("CPU", 1)) for node in nodes) if nodes else 1
    if use_gpu:
        n = actors or max(1, int(gpus / gpus_per_actor))
        # the host side (reading, decoding, handing over) needs cores too: a GPU actor given one CPU ran its
        # Detector with one thread (benchmarks/results/ray_overhead_h200.json); one core of each node is left to
        # Ray's own tasks
        per_node = -(-n // max(1, len(nodes)))
        return n, {"num_gpus": gpus_per_actor, "num_cpus": max(1, (cpus - 1) // per_node)}
    n = actors or max(1, len(nodes))
    per_actor = max(1, cpus * len(nodes) // n) if actors else cpus
    return n, {"num_cpus": min(per_actor, cpus)}
