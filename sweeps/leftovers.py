"""What a sweep leaves on the Ray cluster, and stopping it.

Every sweep driver joins the Ray namespace :func:`sweep_namespace` of its
spec name, and every actor it starts (Tune trials, their Train controllers
and worker groups) inherits that namespace. So the leftovers of an earlier
run of the same sweep — a driver killed before Tune could stop its trials,
or a Train controller still retrying its worker group — are found by
namespace, and stopped before a ``--resume`` (:func:`stop_leftovers`);
after an interrupted run the driver stops its own (``job_id=`` its job).
Placement groups created by those jobs go with them.

Ray's own detached actors (Ray Data's stats and autoscaling coordinators,
Serve) live in namespaces of their own and are never touched.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from finegrain.platform.services.ray_compat import kill_actor_via_gcs


__all__ = ["sweep_namespace", "Leftover", "find_leftovers", "stop_leftovers", "kill_actor", "resource_holders",
           "wait_for_cpus"]

NAMESPACE_PREFIX = "finegrain-sweep-"


def sweep_namespace(name: str) -> str:
    """The Ray namespace of sweep ``name`` (characters other than ``[A-Za-z0-9_.-]`` become ``_``)."""
    return NAMESPACE_PREFIX + re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


@dataclass(frozen=True)
class Leftover:
    kind: str  # "actor" | "placement_group"
    id: str
    what: str  # class name, or bundles of a placement group
    job_id: str

    def __str__(self) -> str:
        return f"{self.kind} {self.what} ({self.id[:12]}, job {self.job_id})"


def _address() -> str:
    """The connected cluster's GCS address, for Ray's state API (which would otherwise guess, and refuse
    when several Ray instances run on this machine)."""
    import ray

    return ray.get_runtime_context().gcs_address


def _alive_actors(namespace: str):
    from ray.util.state import list_actors

    actors = list_actors(address=_address(), filters=[("ray_namespace", "=", namespace)], detail=True,
                         limit=10_000, raise_on_missing_output=False)
    return [a for a in actors if a.state != "DEAD"]


def find_leftovers(namespace: str, job_id: str | None = None, exclude_job: str | None = None) -> list[Leftover]:
    """Live actors of ``namespace`` (of job ``job_id`` only, or of every job but ``exclude_job``) and the
    placement groups their jobs created that are not removed."""
    from ray.util.state import list_placement_groups

    out, jobs = [], set()
    for a in _alive_actors(namespace):
        if (job_id and a.job_id != job_id) or (exclude_job and a.job_id == exclude_job):
            continue
        jobs.add(a.job_id)
        out.append(Leftover("actor", a.actor_id, a.class_name, a.job_id))
    if job_id:
        jobs.add(job_id)
    if jobs:
        for p in list_placement_groups(address=_address(), detail=True, limit=10_000,
                                       raise_on_missing_output=False):
            if p.state != "REMOVED" and p.creator_job_id in jobs:
                out.append(Leftover("placement_group", p.placement_group_id, _bundles(p.bundles), p.creator_job_id))
    return out


def _bundles(bundles) -> str:
    parts = []
    for b in bundles or []:
        res = b.get("unit_resources", b) if isinstance(b, dict) else {}
        parts.append("{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(res.items())
                                     if isinstance(v, (int, float)) and not k.startswith("bundle_group")) + "}")
    return "bundles [" + ", ".join(parts) + "]"


def stop_leftovers(namespace: str, job_id: str | None = None, exclude_job: str | None = None,
                   timeout_s: float = 60.0) -> list[Leftover]:
    """Kill the actors and remove the placement groups :func:`find_leftovers` names; wait until they are gone.

    Returns what was stopped. Raises ``TimeoutError`` naming what is still there after ``timeout_s``.
    """
    import ray
    from ray.util.placement_group import PlacementGroup

    found = find_leftovers(namespace, job_id=job_id, exclude_job=exclude_job)
    for item in found:
        try:
            if item.kind == "actor":
                kill_actor(item.id)
            else:
                ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(item.id))))
        except Exception:  # noqa: BLE001 - gone between listing and stopping; the wait below checks
            pass
    deadline = time.monotonic() + timeout_s
    while True:
        left = find_leftovers(namespace, job_id=job_id, exclude_job=exclude_job)
        if not left:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray namespace {namespace}: still there {timeout_s:g} s after being stopped: "
                               + "; ".join(map(str, left)))
        time.sleep(0.5)


def kill_actor(actor_id: str, timeout_s: float = 10.0) -> None:
    """Kill an actor by its hex id, without restarts, through the GCS (as ``ray.kill`` does for a handle).

    Ray's public API kills only actors this process holds a handle to or that have a name; a Train
    controller or a Tune trial of another (dead) driver has neither, so this goes through
    :func:`~finegrain.platform.services.ray_compat.kill_actor_via_gcs` (the one private Ray call
    finegrain's sweeps make). The channel carries the cluster's auth token like every Ray client channel.
    """
    import ray

    kill_actor_via_gcs(actor_id, ray.get_runtime_context().gcs_address, timeout_s=timeout_s)


def resource_holders() -> list[str]:
    """Who holds CPUs/GPUs now: live actors that require them, and placement groups that are not removed.

    One line each (what, its namespace and job), for error messages.
    """
    from ray.util.state import list_actors, list_placement_groups

    lines = []
    for a in list_actors(address=_address(), filters=[("state", "=", "ALIVE")], detail=True, limit=10_000,
                         raise_on_missing_output=False):
        res = {k: v for k, v in (a.required_resources or {}).items() if k in ("CPU", "GPU") and v}
        if res:
            lines.append(f"actor {a.class_name} {res} (namespace {a.ray_namespace}, job {a.job_id})")
    for p in list_placement_groups(address=_address(), detail=True, limit=10_000, raise_on_missing_output=False):
        if p.state != "REMOVED":
            lines.append(f"placement group {p.placement_group_id[:12]} {p.state} {_bundles(p.bundles)} "
                         f"(job {p.creator_job_id})")
    return lines


def wait_for_cpus(cpus: float, timeout_s: float, what: str) -> None:
    """Block until the cluster has ``cpus`` CPUs available, at most ``timeout_s``; then a RuntimeError naming
    ``what`` needed them and who holds the cluster's CPUs."""
    import ray

    deadline = time.monotonic() + timeout_s
    while ray.available_resources().get("CPU", 0.0) + 1e-9 < cpus:
        if time.monotonic() > deadline:
            held = resource_holders()
            raise RuntimeError(f"{what} waited {timeout_s:g} s for {cpus:g} free CPUs "
                               f"(the cluster has {ray.available_resources().get('CPU', 0.0):g} of "
                               f"{ray.cluster_resources().get('CPU', 0.0):g} free); held by: "
                               + ("; ".join(held) if held else "nothing Ray lists"))
        time.sleep(1.0)
