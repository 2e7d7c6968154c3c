"""After a crash: runs whose process died are marked failed and their staging files removed, and the tiers and
the catalog are reconciled. The shipped instance enables Dagster's run monitoring, but Dagster's
DefaultRunLauncher cannot check a run worker's health (only the Kubernetes, ECS and Docker launchers can), so
a run killed on this machine would stay STARTED forever: mdp looks for itself. Each run's processes leave
their host and pid in the data root (`MdpStorage.setup_for_execution`); a STARTED run whose processes on
this host, and the run worker Dagster names, are all gone is failed with a message saying so.
`mdp verify`, `mdp repair`, `mdp run`/`reprocess` and the lifecycle job call `recover`."""

from __future__ import annotations

import socket

import dagster as dg

from mdp_assets.storage.resource import MdpStorage, process_alive

IN_PROGRESS = [dg.DagsterRunStatus.STARTED]


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid Dagster's executor reported for a run's worker ("Executing steps in process (pid: N)")."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        data = record.dagster_event.engine_event_data if record.dagster_event else None
        pid = data.metadata.get("pid") if data is not None and data.metadata else None
        if pid is not None and str(getattr(pid, "value", pid)).isdigit():
            return int(getattr(pid, "value", pid))
    return None


def fail_dead_runs(instance: dg.DagsterInstance, storage: MdpStorage) -> list[str]:
    """Mark failed every STARTED run whose processes (on this host) have all died; returns what was done."""
    host = socket.gethostname()
    notes = []
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=IN_PROGRESS)):
        run = record.dagster_run
        processes = storage.run_processes(run.run_id)
        if not processes or any(h != host for h, _ in processes):
            continue  # not ours to judge: it never reached mdp's storage, or it ran elsewhere
        pids = {pid for _, pid in processes} | {run_worker_pid(instance, run.run_id) or 0} - {0}
        if any(process_alive(pid) for pid in pids):
            continue
        current = instance.get_run_by_id(run.run_id)
        if current is None or current.status not in IN_PROGRESS:
            continue
        message = (f"mdp: the run's process died (pid {', '.join(map(str, sorted(pids)))} on {host}, no longer "
                   "running); marked failed. What it was writing was never completed; its staging files are removed "
                   "and the stored data are as before it started")
        instance.report_run_failed(current, message)
        notes.append(f"run {run.run_id} ({run.job_name} {run.tags.get('mdp/plate', '')}): {message}")
    for run_id in _finished_runs_with_leases(instance, storage):
        storage.forget_run(run_id)
    return notes


def _finished_runs_with_leases(instance: dg.DagsterInstance, storage: MdpStorage) -> list[str]:
    folder = storage.root / ".runs"
    finished = []
    for lease in folder.iterdir() if folder.is_dir() else []:
        run = instance.get_run_by_id(lease.name)
        if run is None or run.is_finished:
            finished.append(lease.name)
    return finished


def recover(instance: dg.DagsterInstance, storage: MdpStorage) -> list[str]:
    """Everything a crash can leave, settled: dead runs failed, their staging removed, tiers and catalog
    reconciled."""
    notes = fail_dead_runs(instance, storage)
    notes += storage.clean_dead_staging()
    notes += storage.store().reconcile()
    return notes
