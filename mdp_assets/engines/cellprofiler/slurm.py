"""CellProfiler groups as SLURM jobs: the same groups and the same runner as the local engine, one SLURM array
task per group of wells, submitted with `sbatch` and followed with `squeue` (SLURM schedules; mdp only submits
and waits).

Each group gets a Dagster Pipes session of its own over files in a folder the compute nodes share
(`PipesFileContextInjector` / `PipesFileMessageReader`), so CellProfiler's log streams into the run's log as it
does locally, and the runner (`runner.py`, in CellProfiler's own environment) reports the group's result.
The jobs of one step form one job array named `mdp-<plate>-<step>`; a group that fails (CellProfiler fails,
the job times out, the node dies) is submitted again alone, up to `retries` times, under the same name. Every
task's own log (`<work_dir>/<plate>/logs/<job>_<array job>_<task>.log`) is kept.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from mdp_assets.config import SlurmSettings
from mdp_assets.engines.cellprofiler.engine import CellProfilerEngine, GroupResult, run_each_group_alone
from mdp_assets.errors import MdpError

__all__ = ["SlurmCellProfilerEngine", "job_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SQUEUE_GONE = ("Invalid job id", "invalid job id")
# squeue may fail while the controller restarts; give up after this long without an answer.
SQUEUE_PATIENCE_SECONDS = 600


def job_name(context: dg.AssetExecutionContext | dg.OpExecutionContext) -> str:
    """`mdp-<plate>-<step>`: the plate (the run's partition) first, so a cluster's queue shows whose jobs these are."""
    plate = context.partition_key if context.has_partition_key else "unpartitioned"
    return _UNSAFE.sub("_", f"mdp-{plate}-{context.op_def.name}")


class SlurmCellProfilerEngine(CellProfilerEngine):
    """CellProfiler 4.2.8.1 groups as SLURM array tasks. The CellProfiler environment (`environment`), the
    groups' input and output folders (the data root) and `work_dir` must be on a filesystem every compute node
    mounts at the same path. Here `workers` is how many groups a step splits into (`for_wells` sets it from
    `wells_per_group`); each group runs as one CellProfiler process in its own job."""

    partition: str | None = Field(None, description="sbatch --partition")
    account: str | None = Field(None, description="sbatch --account")
    time_limit: str = Field("04:00:00", description="sbatch --time of one group")
    cpus_per_group: int = Field(1, ge=1, description="sbatch --cpus-per-task of one group")
    memory: str | None = Field("8G", description="sbatch --mem of one group; None: the partition's default")
    wells_per_group: int = Field(4, ge=1, description="wells per group, so per array task")
    max_running: int = Field(0, ge=0, description="array tasks running at once (%N); 0: no limit")
    retries: int = Field(2, ge=0, description="times a failed group is submitted again, alone")
    sbatch_args: list[str] = Field(default_factory=list, description="more sbatch options")
    work_dir: str = Field(description="shared folder of job scripts, Pipes files and logs")
    slurm_conf: str | None = Field(None, description="SLURM_CONF for sbatch/squeue/scontrol")
    poll_seconds: float = Field(5.0, gt=0, description="seconds between squeue calls")

    @classmethod
    def from_slurm_settings(cls, environment: str, java_home: str | None, settings: SlurmSettings,
                            work_dir: Path) -> SlurmCellProfilerEngine:
        values = settings.model_dump()
        values["work_dir"] = str(values["work_dir"] or work_dir)
        return cls(environment=environment, java_home=java_home, **values)

    def available(self) -> bool:
        return super().available() and shutil.which("sbatch") is not None

    def for_wells(self, wells: int) -> SlurmCellProfilerEngine:
        """This engine for a step over `wells` wells: `workers` groups of at most `wells_per_group` wells."""
        return self.model_copy(update={"workers": max(1, math.ceil(wells / self.wells_per_group))})

    # -- running a step's groups ------------------------------------------------------------------------
    def run_groups(
        self, context: dg.AssetExecutionContext | dg.OpExecutionContext, pipeline: Path, groups: list[dict[str, Any]]
    ) -> tuple[str, list[GroupResult]]:
        """Every group as one array task (the same group contract as the local engine); groups finished
        earlier (their `_group_done.json`) are not submitted; a failed group is submitted again alone."""
        if not super().available():
            raise MdpError(f"no CellProfiler environment at {self.python.parent.parent}; run `make cellprofiler`")
        if shutil.which("sbatch") is None:
            raise MdpError("engine.cellprofiler.executor is slurm, but sbatch is not on PATH (install slurm-client)")
        if not pipeline.exists():
            raise MdpError("CellProfiler pipeline not found", path=pipeline)
        name = job_name(context)
        plate = context.partition_key if context.has_partition_key else "unpartitioned"
        root = Path(self.work_dir) / _UNSAFE.sub("_", plate)
        return run_each_group_alone(
            context, groups, self.retries, where=f"SLURM ({plate})",
            launch=lambda pending, attempt: self._run_array(context, pipeline, groups, pending, name, root, attempt))

    def _run_array(self, context, pipeline: Path, groups: list[dict[str, Any]], indices: list[int], name: str,
                   root: Path, attempt: int) -> tuple[dict[int, GroupResult], set[str]]:
        folder = root / f"{context.run_id[:8]}-{context.op_def.name}-{attempt + 1}-{uuid.uuid4().hex[:6]}"
        logs = root / "logs"
        folder.mkdir(parents=True)
        logs.mkdir(parents=True, exist_ok=True)
        sessions: dict[int, Any] = {}
        with ExitStack() as stack:
            for index in indices:
                task = folder / f"task-{index}"
                task.mkdir()
                extras = {"pipeline": str(pipeline), "groups": [groups[index]], "workers": 1,
                          "java_home": self._java_home()}
                session = stack.enter_context(dg.open_pipes_session(
                    context=context, extras=extras,
                    context_injector=dg.PipesFileContextInjector(str(task / "context.json")),
                    message_reader=dg.PipesFileMessageReader(str(task / "messages.jsonl"), cleanup_file=False),
                ))
                env = {**session.get_bootstrap_env_vars(), "MDP_GROUP_ID": str(groups[index]["id"])}
                (folder / f"task-{index}.env").write_text(
                    "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items()))
                sessions[index] = session
            script = folder / "group.sh"
            script.write_text(
                "#!/bin/bash\n# one CellProfiler group of mdp (mdp_assets/engines/cellprofiler/slurm.py)\nset -eu\n"
                f". {shlex.quote(str(folder))}/task-${{SLURM_ARRAY_TASK_ID}}.env\n"
                'echo "mdp: group $MDP_GROUP_ID, SLURM task ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} on '
                '$(hostname) with ${SLURM_CPUS_PER_TASK:-1} CPU(s), started $(date -Is)"\n'
                f"code=0; {shlex.quote(str(self.python))} {shlex.quote(str(self.command[1]))} || code=$?\n"
                'echo "mdp: runner exited $code at $(date -Is)"\nexit $code\n')
            job_id = self._submit(name, indices, folder, logs, script)
            context.log.info(f"SLURM job {job_id} ({name}): {len(indices)} group(s) as array tasks "
                             f"{_array_spec(indices)}; logs in {logs}")
            try:
                self._wait(job_id)
            except BaseException:
                self._slurm(["scancel", job_id], check=False)
                raise
            states = self._task_states(job_id)
        outcome: dict[int, GroupResult] = {}
        versions: set[str] = set()
        for index, session in sessions.items():
            group, log = groups[index], logs / f"{name}_{job_id}_{index}.log"
            _keep_pipes_log(folder / f"task-{index}" / "messages.jsonl", log)
            summary = next((m["summary"] for m in session.get_custom_messages()
                            if isinstance(m, dict) and "summary" in m), None)
            if summary is None:
                state = states.get(index, "unknown")
                outcome[index] = GroupResult(group["id"], False, None, f"SLURM task {job_id}_{index} ended "
                                             f"{state} without a result; its log {log}:\n{_tail(log)}", False)
            else:
                versions.add(summary["cellprofiler_version"])
                (g,) = summary["groups"]
                message = g.get("message")
                outcome[index] = dataclasses.replace(GroupResult.from_runner(g),
                                                     message=f"{message}\n(SLURM log {log})" if message else None)
            if not outcome[index].ok:
                context.log.error(f"SLURM task {job_id}_{index}: group {group['id']} failed; log {log}")
        shutil.rmtree(folder, ignore_errors=True)  # the Pipes files; each task's log stays in `logs`
        return outcome, versions

    def sbatch_command(self, name: str, indices: list[int], folder: Path, logs: Path, script: Path) -> list[str]:
        """The sbatch call that submits these groups (array task ids) as one job array."""
        array = _array_spec(indices) + (f"%{self.max_running}" if self.max_running else "")
        command = ["sbatch", "--parsable", f"--job-name={name}", f"--array={array}",
                   f"--cpus-per-task={self.cpus_per_group}", f"--time={self.time_limit}",
                   f"--output={logs}/%x_%A_%a.log", f"--chdir={folder}"]
        command += [f"--partition={self.partition}"] if self.partition else []
        command += [f"--account={self.account}"] if self.account else []
        command += [f"--mem={self.memory}"] if self.memory else []
        return [*command, *self.sbatch_args, str(script)]

    def _submit(self, name: str, indices: list[int], folder: Path, logs: Path, script: Path) -> str:
        completed = self._slurm(self.sbatch_command(name, indices, folder, logs, script))
        job_id = completed.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise MdpError(f"sbatch gave no job id: {completed.stdout!r} {completed.stderr!r}")
        return job_id

    def _wait(self, job_id: str) -> None:
        """Until no task of the array is pending or running (squeue lists none)."""
        silent_since = None
        while True:
            done = self._slurm(["squeue", "-h", "-j", job_id, "-o", "%i %T"], check=False)
            if done.returncode == 0:
                silent_since = None
                if not done.stdout.strip():
                    return
            elif any(marker in done.stderr for marker in _SQUEUE_GONE):
                return
            else:
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since > SQUEUE_PATIENCE_SECONDS:
                    raise MdpError(f"squeue has not answered about SLURM job {job_id} for "
                                   f"{SQUEUE_PATIENCE_SECONDS} s: {done.stderr.strip()}")
            time.sleep(self.poll_seconds)

    def _task_states(self, job_id: str) -> dict[int, str]:
        """Array task -> final state (COMPLETED, FAILED, TIMEOUT, ...) while the controller still knows the job."""
        shown = self._slurm(["scontrol", "-o", "show", "job", job_id], check=False)
        states = {}
        for line in shown.stdout.splitlines():
            task = re.search(r"\bArrayTaskId=(\d+)\b", line)
            state = re.search(r"\bJobState=(\S+)", line)
            if task and state:
                states[int(task.group(1))] = state.group(1)
        return states

    def _slurm(self, command: list[str], check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, **({"SLURM_CONF": self.slurm_conf} if self.slurm_conf else {}))
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        if check and completed.returncode != 0:
            raise MdpError(f"{command[0]} failed ({completed.returncode}): {completed.stderr.strip()}\n"
                           f"command: {shlex.join(command)}")
        return completed


def _array_spec(indices: list[int]) -> str:
    """`0-3,5`: SLURM's array syntax for these task ids."""
    ranges, start = [], None
    for position, index in enumerate(sorted(indices)):
        if start is None:
            start = previous = index
        elif index == previous + 1:
            previous = index
        else:
            ranges.append((start, previous))
            start = previous = index
        if position == len(indices) - 1:
            ranges.append((start, previous))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)


def _keep_pipes_log(messages: Path, log: Path) -> None:
    """Append what the runner reported through Pipes (the group's result) to the task's SLURM log, after the output
    CellProfiler wrote to it (the task's stdout and stderr)."""
    lines = []
    try:
        for line in messages.read_text(errors="replace").splitlines():
            try:
                message = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(message, dict):
                continue
            params = message.get("params") or {}
            if message.get("method") == "log":
                lines.append(f"{params.get('level', 'INFO')}: {params.get('message', '')}\n")
            elif message.get("method") == "report_custom_message" and "summary" not in (params.get("payload") or {}):
                lines.append(f"result: {json.dumps(params.get('payload'))}\n")
    except OSError:
        return
    with log.open("a") as handle:
        handle.write("--- the runner's log (Dagster Pipes) ---\n" + "".join(lines))


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
