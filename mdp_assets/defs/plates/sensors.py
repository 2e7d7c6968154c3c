"""`new_plate_sensor`: registers plates that arrive in the landing zone and starts their processing."""

import time

import dagster as dg

from mdp_assets.config import IntakeSettings, StepSettings
from mdp_assets.defs.plates.partitions import plates_partitions
from mdp_assets.plates.intake import IntakeCursor, evaluate_landing_zone
from mdp_assets.services.registration import register_ready_plate
from mdp_assets.services.reprocess import PLATE_JOB
from mdp_assets.storage.resource import MdpStorage


@dg.sensor(
    job_name=PLATE_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the landing zone; a plate folder whose manifest exists, whose expected images are all "
    "present and unchanged for the quiet period, and whose files are readable is added to `plates` and run "
    "through every level. Broken plates are skipped with the reason, plates stuck short of their images are "
    "reported incomplete with what they lack; the landing zone is never modified.",
)
def new_plate_sensor(context: dg.SensorEvaluationContext, storage: MdpStorage, intake: IntakeSettings,
                     settings: StepSettings):
    cursor = IntakeCursor.load(context.cursor)
    landing = storage.landing()
    decisions = evaluate_landing_zone(
        landing.snapshot(),
        cursor,
        time.time(),
        intake.quiet_period_seconds,
        known_partitions=set(context.instance.get_dynamic_partitions(plates_partitions.name)),
        max_plates_validated=intake.max_plates_validated_per_tick,
        fetch=landing.fetch,
        incomplete_after_s=intake.incomplete_after_seconds,
    )
    ready = []
    for decision in [d for d in decisions if d.status == "ready"]:
        problem = register_ready_plate(storage, decision.plate, settings)
        if problem is None:
            ready.append(decision)
        else:
            context.log.warning(f"plate {decision.plate} rejected: {problem}")
            cursor.registered.pop(decision.plate, None)
            cursor.rejected[decision.plate] = (decision.fingerprint, problem)
    for decision in decisions:
        if decision.status == "rejected":
            context.log.warning(f"plate {decision.plate} rejected: {decision.reason}")
        elif decision.status == "changed" and cursor.changed_reported.get(decision.plate) != decision.fingerprint:
            context.log.warning(f"plate {decision.plate}: {decision.reason}")
            cursor.changed_reported[decision.plate] = decision.fingerprint
    if ready:
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(run_key=f"{d.plate}:{d.fingerprint[:16]}", partition_key=d.plate, tags={"mdp/plate": d.plate})
                for d in ready
            ],
            dynamic_partitions_requests=[plates_partitions.build_add_request([d.plate for d in ready])],
            cursor=cursor.dump(),
        )
    notes = [f"{d.plate}: {d.status}, {d.reason}" for d in decisions
             if d.status in ("waiting", "incomplete", "rejected", "changed")]
    return dg.SensorResult(
        skip_reason="; ".join(notes) if notes else f"no new plates ({len(decisions)} known)",
        cursor=cursor.dump(),
    )
