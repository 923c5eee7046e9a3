"""Console views shared by the CLI and the demo.

Rich tables of the leaderboard and of a mapping-entropy comparison, and
submitting a command to the local stack's Ray job server with its logs
streamed (what ``finegrain sweep --submit`` and the demo's sweep do).
"""

from __future__ import annotations

import shlex
import sys
import time

import typer
from rich.table import Table

from finegrain.platform.services.stack import LocalStack, use_token

__all__ = ["leaderboard_table", "ranking_table", "submit_job", "JOB_STOP_WAIT_S"]

#: Seconds a stopped job's driver gets between SIGTERM and SIGKILL.
JOB_STOP_WAIT_S = 60


def leaderboard_table(rows: list[dict], system: str):
    """A rich Table of leaderboard rows (also used by the demo): one row per metric, one column per model."""
    # imported here: the leaderboard module pulls in evaluation, torch and MLflow (~3 s measured), which
    # `finegrain --help` and every command that draws no table should not wait for
    from finegrain.platform.apps.leaderboard import leaderboard_rows

    header, body = leaderboard_rows(rows)
    title = f"finegrain leaderboard: {system}" + (f" (data {rows[0]['data_hash']})" if rows else "")
    table = Table(title=title, caption="value [95 % block-bootstrap CI] value/floor (floor: the reference against "
                                       "itself, two halves); models best first by the "
                                       "composite: mean log10 of the ratios over CG-RMSD, heavy-bond JS, angle JS, "
                                       "energy W1 and p99 excess, clash score (+ velocity JS for temporal models); "
                                       "0 = at the floor")
    for k, name in enumerate(header):
        table.add_column(name, justify="left" if k == 0 else "right", no_wrap=k == 0)
    for line in body:
        table.add_row(*line)
    return table


def ranking_table(rows: list[dict], system: str, budget: int):
    """A rich Table of ranked comparison rows (nats per atomistic dof; rank by the flow's S_map').

    S_map' (flow, Gauss): w.r.t. the maxent Gaussian fibre reference;
    S_map EV: Giulini's energy-variance estimate at the k the doubling check
    reached ("*": not converged, an upper bound); H(X|Y) flow with its 95 %
    block-bootstrap CI ("!": under-trained by the nested-mapping check).
    """
    table = Table(title=f"mapping entropy, {system} (flow budget {budget} steps; nats per atomistic dof)")
    for col in ("rank", "mapping", "beads", "fibre dim", "S_map' flow", "S_map' Gauss", "S_map EV (k)",
                "H(X|Y) flow [95% CI]", "H(X|Y) Gauss"):
        table.add_column(col, justify="left" if col == "mapping" else "right")
    for r in rows:
        ev = f"{r['smap_giulini_per_dof']:.4f}"
        if "giulini_k2" in r:
            ev += f" ({r['giulini_k2']:.0f}{'' if r.get('giulini_converged') == 1.0 else '*'})"
        h = (f"{r['h_cond_flow_per_dof']:.4f} [{r['h_cond_flow_ci_low_per_dof']:.4f}, "
             f"{r['h_cond_flow_ci_high_per_dof']:.4f}]{' !' if r.get('under_trained') else ''}")
        table.add_row(str(r["rank"]), r["mapping"], str(r["n_beads"]), f"{r['fibre_dim']:.0f}",
                      f"{r['smap_flow_per_dof']:.4f}", f"{r['smap_gauss_per_dof']:.4f}", ev, h,
                      f"{r['h_cond_gauss_per_dof']:.4f}")
    table.caption = ("S_map': vs the maxent Gaussian fibre reference; S_map EV: Giulini energy variance (another "
                     "quantity); *: k-doubling not converged; !: under-trained (nested-mapping check)")
    return table


def submit_job(entrypoint: list[str], working_dir: str = ".", poll_s: float = 1.0) -> int:
    """Submit ``entrypoint`` to the local stack's job server with its auth token; stream logs; return 0 on success.

    The same as ``eval "$(finegrain stack env)"; ray job submit --address URL --working-dir . -- ...``.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient  # Ray: ~1 s to import, only when submitting

    st = LocalStack().require()
    use_token(st)
    client = JobSubmissionClient(st.dashboard_url)
    # `ray job stop` sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (Ray's default 3 s): give the
    # sweep time to stop its trials and free their resources (the supervisor reads it from the job's env)
    env = {"RAY_JOB_STOP_WAIT_TIME_S": str(JOB_STOP_WAIT_S)}
    job_id = client.submit_job(entrypoint=shlex.join(entrypoint), runtime_env={"working_dir": working_dir,
                                                                                "env_vars": env})
    typer.echo(f"submitted job {job_id} to {st.dashboard_url}")
    shown = 0
    try:
        while True:
            status = client.get_job_status(job_id)
            logs = client.get_job_logs(job_id)
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
            if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
                typer.echo(f"job {job_id}: {status.value}")
                return 0 if status == JobStatus.SUCCEEDED else 1
            time.sleep(poll_s)
    except KeyboardInterrupt:  # Ctrl-C here stops the job too (Tune saves its state: --resume continues)
        client.stop_job(job_id)
        typer.echo(f"stopped job {job_id}")
        return 130
