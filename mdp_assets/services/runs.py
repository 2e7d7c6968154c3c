"""Runs submitted to the deployment's Dagster instance, the way the UI submits them.

A command that makes, moves or deletes data does not execute anything itself: it submits a run of a job of
the deployment's code location (`dagster job launch`, through the run coordinator, so the run queue and its
limits apply, the run carries tags, and it appears in the UI's run history), then waits for it if asked.
On an instance whose queue is served by a daemon that is not running (the embedded default without
`make dev`), waiting starts `dagster-daemon` for as long as the runs take, and stops it after.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import yaml

from mdp_assets.config import CONFIG_ENV, Deployment
from mdp_assets.errors import MdpError

LOCATION = "mdp"
DEFINITIONS_MODULE = "mdp_assets.definitions"
TERMINAL = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
HEARTBEAT_FRESH_S = 90
BIN = Path(sys.executable).parent  # dagster's commands, installed beside the interpreter running mdp
PROGRESS_EVENTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}


@dataclass(frozen=True)
class RunRequest:
    """One run to submit: a job, the plate it works on (its partition), the steps, tags and run config."""

    job: str
    plate: str | None = None
    steps: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    run_config: str | None = None  # JSON

    def all_tags(self, command: str) -> dict[str, str]:
        tags = {"mdp/command": command, **dict(self.tags)}
        if self.plate:
            tags.update({"dagster/partition": self.plate, "mdp/plate": self.plate})
        return tags


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    job: str
    plate: str | None
    status: str
    errors: tuple[str, ...] = ()

    @property
    def success(self) -> bool:
        return self.status == dg.DagsterRunStatus.SUCCESS.value


def environment(deployment: Deployment) -> dict[str, str]:
    """The environment every Dagster process of this deployment gets: its config file and instance."""
    env = dict(os.environ)
    if deployment.path is not None:
        env[CONFIG_ENV] = str(deployment.path)
    home = deployment.dagster_home
    if home is None:
        raise MdpError("no Dagster instance: set dagster_home in the configuration or DAGSTER_HOME", path=deployment.path)
    env["DAGSTER_HOME"] = str(home)
    return env


def workspace_file(deployment: Deployment) -> Path:
    """The workspace the deployment's daemon and webserver load: the configured file, or one mdp writes into
    the instance folder that loads this package's definitions as the location `mdp`."""
    if deployment.config.execution.workspace:
        return Path(deployment.config.execution.workspace)
    home = deployment.dagster_home
    assert home is not None
    path = home / "workspace.yaml"
    wanted = {"load_from": [{"python_module": {"module_name": DEFINITIONS_MODULE, "location_name": LOCATION}}]}
    if not path.exists() or yaml.safe_load(path.read_text()) != wanted:
        home.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(wanted, sort_keys=False))
    return path


def instance_for(deployment: Deployment) -> dg.DagsterInstance:
    home = deployment.dagster_home
    if home is None:
        raise MdpError("no Dagster instance: set dagster_home in the configuration or DAGSTER_HOME", path=deployment.path)
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.from_config(str(home))


def submit(deployment: Deployment, request: RunRequest, command: str) -> str:
    """Submit one run through the instance's run coordinator; returns its run id."""
    run_id = str(uuid.uuid4())
    arguments = [str(BIN / "dagster"), "job", "launch", "-w", str(workspace_file(deployment)),
                 "-l", LOCATION, "-j", request.job, "--run-id", run_id,
                 "--tags", json.dumps(request.all_tags(command))]
    if request.steps:
        arguments += ["-o", ",".join(request.steps)]
    if request.run_config:
        arguments += ["--config-json", request.run_config]
    result = subprocess.run(arguments, env=environment(deployment), capture_output=True, text=True)
    if result.returncode != 0:
        message = (result.stderr.strip() or result.stdout.strip()).splitlines()[-20:]
        raise MdpError(f"submitting {request.job} for {request.plate or 'all plates'} failed:\n" + "\n".join(message))
    return run_id


def daemon_needed(instance: dg.DagsterInstance) -> bool:
    """Whether queued runs wait for a daemon that has not reported in recently."""
    if not isinstance(instance.run_coordinator, dg.QueuedRunCoordinator):
        return False
    heartbeats = instance.get_daemon_heartbeats()
    beat = heartbeats.get("QUEUED_RUN_COORDINATOR")
    return beat is None or time.time() - beat.timestamp > HEARTBEAT_FRESH_S


@contextmanager
def daemon_if_needed(deployment: Deployment, instance: dg.DagsterInstance,
                     report: Callable[[str], None]) -> Iterator[None]:
    """Run `dagster-daemon` for the duration when no daemon serves the instance's run queue."""
    if not daemon_needed(instance):
        yield
        return
    home = deployment.dagster_home
    assert home is not None
    log = open(home / "mdp-daemon.log", "ab")
    report(f"no Dagster daemon is serving the run queue; starting one until the runs finish (log: {log.name})")
    process = subprocess.Popen([str(BIN / "dagster-daemon"), "run", "-w", str(workspace_file(deployment))],
                               env=environment(deployment), stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        yield
    finally:
        log.close()
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Ours was the only daemon: its heartbeats must not make the next command think one is running.
        instance.wipe_daemon_heartbeats()


def wait(instance: dg.DagsterInstance, run_ids: list[str], report: Callable[[str], None],
         timeout_s: float | None = None, poll_s: float = 2.0) -> list[RunOutcome]:
    """Wait until every run ends, reporting each step as it starts and ends (with how many of the run's steps
    are done) and the sites a step has done; returns the outcomes."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    seen: dict[str, int] = {run_id: 0 for run_id in run_ids}
    done: dict[str, int] = {run_id: 0 for run_id in run_ids}
    pending = set(run_ids)
    while pending:
        for run_id in sorted(pending):
            run = instance.get_run_by_id(run_id)
            if run is None:
                raise MdpError(f"run {run_id} is not in the instance's run storage")
            steps = len(run.asset_selection or ()) or len(run.step_keys_to_execute or ()) or None
            events = [e for e in instance.all_logs(run_id) if _is_progress(e)]
            for event in events[seen[run_id]:]:
                who = run.tags.get("mdp/plate", run.job_name)
                if not event.is_dagster_event:
                    report(f"  {who}: {event.user_message.removeprefix(PROGRESS_PREFIX)}")
                    continue
                kind = event.dagster_event.event_type.value.removeprefix("STEP_").lower()
                done[run_id] += kind == "success"
                count = f" [{done[run_id]} of {steps} levels done]" if steps and kind != "start" else ""
                report(f"  {who}: {event.step_key} {kind}{count}")
            seen[run_id] = len(events)
            if run.status in TERMINAL:
                pending.discard(run_id)
        if pending:
            if deadline is not None and time.monotonic() > deadline:
                raise MdpError(f"runs still not finished after {timeout_s:.0f} s: {sorted(pending)}")
            time.sleep(poll_s)
    outcomes = []
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        outcomes.append(RunOutcome(run_id, run.job_name, run.tags.get("mdp/plate"), run.status.value,
                                   tuple(failures(instance, run_id))))
    return outcomes


def _is_progress(record: dg.EventLogEntry) -> bool:
    if record.is_dagster_event:
        return record.dagster_event.event_type in PROGRESS_EVENTS
    return (record.user_message or "").startswith(PROGRESS_PREFIX)


def failures(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """What went wrong in a run, step by step, in the words of the error that stopped it (mdp's own message,
    not Dagster's wrapper around it)."""
    found = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event if record.is_dagster_event else None
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_FAILURE and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            found.append(f"{event.step_key}: {error.message.strip()}")
        elif event.event_type == dg.DagsterEventType.RUN_FAILURE and not found:
            found.append(record.message)
    return found


# A step's progress reaches `mdp run` (and the UI's run log) as log lines with this prefix.
PROGRESS_PREFIX = "progress: "


def site_progress(log: Callable[[str], None], level: str, total: int, reports: int = 10) -> Callable[[int], None]:
    """A callback for a per-site loop: logs '<level>: sites done N of M' about `reports` times in all."""
    every = max(1, total // reports)

    def report(done: int) -> None:
        if done == total or done % every == 0:
            log(f"{PROGRESS_PREFIX}{level}: sites done {done} of {total}")

    return report
