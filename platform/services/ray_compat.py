"""The private Ray APIs finegrain needs, each behind one function.

Everything else in finegrain uses Ray's public API. The two jobs below have no
public API in the Ray versions finegrain supports, so the private calls live
here and nowhere else; ``tests/test_ray_compat.py`` runs each function against
a real Ray cluster and checks its effect through a public API, and checks that
the installed Ray is one these functions were verified with
(:data:`VERIFIED_RAY`). Moving to a Ray outside that range means re-running
those tests and widening the range (and the ``ray`` bound in pyproject.toml).

Replaced by public APIs (not here): the Tune-session check
(``ray.tune.get_context().get_trial_id()``, in ``trainables.tune_hooks``) and
Serve's HTTP address (Serve's REST API ``GET /api/serve/applications/``, in
``platform.apps.serving``).
"""

from __future__ import annotations

__all__ = ["VERIFIED_RAY", "ray_version_verified", "reload_auth_token", "kill_actor_via_gcs"]

#: Ray versions (``>=low, <high``) the functions of this module were verified with.
VERIFIED_RAY = ("2.60.0", "2.61.0")


def ray_version_verified(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed Ray) lies in :data:`VERIFIED_RAY`."""
    if version is None:
        import ray

        version = ray.__version__
    from packaging.version import Version  # a dependency of Ray

    low, high = VERIFIED_RAY
    return Version(low).release <= Version(version).release < Version(high).release


def reload_auth_token() -> None:
    """Make this process re-read Ray's token-auth settings from the environment.

    Private API: ``ray._raylet.Config.initialize("")`` (re-reads ``RAY_AUTH_MODE``
    into the cached RayConfig) and ``ray._raylet.AuthenticationTokenLoader
    .instance().reset_cache()`` (drops the cached token so the next use reads
    ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``). Ray itself does the same after
    writing a token (``ray get-auth-token --generate``, ``ray.init``'s token setup).

    Why: Ray's C++ token loader caches the token (or its absence) the first time
    it is used in a process; a process that set ``RAY_AUTH_*`` after that (e.g.
    the CLI, which learns the stack's token file only when it reads the stack
    state) would otherwise keep presenting no token (or the old one) to the GCS
    and the dashboard. Ray has no public API to point a running process at a
    token: its documentation only says to set the environment before starting it.

    Verified with Ray 2.60.0 (see :data:`VERIFIED_RAY`).
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def kill_actor_via_gcs(actor_id: str, gcs_address: str, timeout_s: float = 10.0) -> None:
    """Force-kill the actor with hex id ``actor_id``, without restarts, through the GCS at ``gcs_address``.

    Private API: ``ray._private.gcs_utils.create_gcs_channel`` and the generated
    ``ray.core.generated.gcs_service_pb2(_grpc)`` ``ActorInfoGcsService.KillActorViaGcs``
    call, which is what ``ray.kill(handle, no_restart=True)`` sends. The channel
    carries the process's Ray auth token like every Ray client channel.

    Why: ``ray.kill`` needs an actor handle, and the public ways to get one
    (``ray.get_actor``, ``ray kill-actor --name``) need the actor's name; the
    leftovers of a dead sweep driver (Train controllers, Tune trials) have none,
    and ``ray.util.state`` lists them (with their ids) but cannot stop them.

    Raises RuntimeError when the GCS refuses, or when this Ray moved the call
    (the import fails). Verified with Ray 2.60.0 (see :data:`VERIFIED_RAY`).
    """
    import ray

    try:
        from ray._private.gcs_utils import create_gcs_channel
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError as exc:
        raise RuntimeError(f"actor {actor_id}: Ray {ray.__version__} moved its GCS kill call (finegrain is verified "
                           f"with Ray >={VERIFIED_RAY[0]},<{VERIFIED_RAY[1]}); stop the actor with "
                           "`finegrain stack down` (or `ray stop`)") from exc

    stub = gcs_service_pb2_grpc.ActorInfoGcsServiceStub(create_gcs_channel(gcs_address))
    reply = stub.KillActorViaGcs(gcs_service_pb2.KillActorViaGcsRequest(
        actor_id=bytes.fromhex(actor_id), force_kill=True, no_restart=True), timeout=timeout_s)
    if reply.status.code != 0:
        raise RuntimeError(f"actor {actor_id}: the GCS refused to kill it: {reply.status.message}")
