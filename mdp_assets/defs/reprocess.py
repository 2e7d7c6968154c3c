"""Reprocessing from the UI: `reprocess_stale_levels`, a sensor a person turns on (Automation >
reprocess_stale_levels > toggle, or "Test sensor" to see what it would run) after a pipeline, parameter or
engine change. Each tick submits, through the run queue, one `plate_job` run per plate with exactly that
plate's stale levels selected (the same plan as `mdp reprocess`: code version changed, a level it reads was
re-made or is stale, the plate's files changed, stored files found damaged), then `consensus_job` once no
plate has work left. Plates never made are left to the intake sensor. While such runs are in progress it
waits; the same stale state is requested once (a run that failed is not retried until something changes)."""

from __future__ import annotations

import hashlib

import dagster as dg

from mdp_assets.defs.storage.verify import CHECK_NAME
from mdp_assets.plates.registry import PARTITIONS
from mdp_assets.services.reprocess import CONSENSUS_JOB, PLATE_JOB, consensus_reason, plan_plate
from mdp_assets.storage.resource import MdpStorage

SENSOR = "reprocess_stale_levels"
COMMAND_TAG = "mdp/command"
COMMAND = "reprocess"
UNFINISHED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
              dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def build_reprocess_sensor(jobs: list) -> dg.SensorDefinition:
    """The sensor over `plate_job` and `consensus_job` (the jobs it submits runs of)."""
    return dg.sensor(
        name=SENSOR,
        jobs=jobs,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Turn on after a pipeline, parameter or engine change: re-makes exactly the stale levels of "
        "every plate (one plate_job run per plate, the reasons in its tags), then the consensus. Off by default: "
        "the lab chooses when changed code re-makes data. The same plan as `mdp reprocess`.",
    )(reprocess_stale_levels)


def reprocess_stale_levels(context: dg.SensorEvaluationContext, storage: MdpStorage):
    instance = context.instance
    if instance.get_runs_count(dg.RunsFilter(tags={COMMAND_TAG: COMMAND}, statuses=UNFINISHED)):
        return dg.SkipReason("reprocessing runs are still in progress")
    repository = context.repository_def
    requests = []
    for plate in instance.get_dynamic_partitions(PARTITIONS):
        if not _ever_made(instance, plate):
            continue  # a new plate is the intake sensor's (new_plate_sensor) to make
        work = plan_plate(instance, repository, storage, plate)
        if not work.levels:
            continue
        reasons = "; ".join(f"{level}: {work.reasons.get(level, '')}" for level in work.levels)
        levels = [dg.AssetKey(level) for level in work.levels]
        requests.append(dg.RunRequest(
            run_key=_key(plate, reasons),
            job_name=PLATE_JOB,
            partition_key=plate,
            asset_selection=levels,
            # The levels' own checks; the storage verification of whole levels runs in verify_job.
            asset_check_keys=[k for k in repository.asset_graph.asset_check_keys
                              if k.asset_key in levels and k.name != CHECK_NAME],
            tags={COMMAND_TAG: COMMAND, "mdp/plate": plate, "mdp/reasons": reasons[:4000]},
        ))
    if not requests:
        reason = consensus_reason(instance, repository)
        if reason is None:
            return dg.SkipReason("every level of every plate, and the consensus, is up to date")
        requests.append(dg.RunRequest(run_key=_key("consensus", reason), job_name=CONSENSUS_JOB,
                                      tags={COMMAND_TAG: COMMAND, "mdp/reasons": reason}))
    context.log.info("; ".join(f"{r.partition_key or 'consensus'}: {r.tags['mdp/reasons']}" for r in requests))
    return requests


def _ever_made(instance: dg.DagsterInstance, plate: str) -> bool:
    return bool(instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_images"), asset_partitions=[plate]), limit=1).records)


def _key(what: str, reasons: str) -> str:
    # The same stale state is requested once; a later change (new code versions) gets a new key.
    return f"{what}:{hashlib.sha256(reasons.encode()).hexdigest()[:16]}"
