"""The lifecycle job (daily), and the release of transient levels right after a plate's run."""

import dagster as dg
from pydantic import Field

from mdp_assets.services.recovery import fail_dead_runs
from mdp_assets.services.lifecycle import apply_lifecycle, describe_move, release_consumed
from mdp_assets.services.reprocess import PLATE_JOB
from mdp_assets.storage.resource import MdpStorage


class LifecycleConfig(dg.Config):
    as_of: str | None = Field(None, description="ISO time to judge ages by (default: now); for planning ahead")
    dry_run: bool = Field(False, description="report what would move, move nothing")


def build_lifecycle(consumers: dict[str, list[str]]):
    """The lifecycle job, its daily schedule and the sensor that releases transient data after plate runs;
    `consumers` maps each level to the levels that read it."""

    @dg.op(description="Clean half-written copies, finish interrupted moves, release consumed transient levels, "
                       "and move every partition that is due to its next tier.")
    def lifecycle_step(context: dg.OpExecutionContext, config: LifecycleConfig, storage: MdpStorage) -> None:
        if not config.dry_run:
            for note in fail_dead_runs(context.instance, storage) + storage.clean_dead_staging():
                context.log.warning(note)
        report = apply_lifecycle(context.instance, storage, consumers, config.as_of, config.dry_run)
        for line in [*report.released, *report.notes]:
            context.log.info(line)
        for move in report.moves:
            context.log.info(describe_move(move))
            context.log_event(dg.AssetObservation(
                asset_key=dg.AssetKey.from_user_string(move["asset"]),
                partition=move["partition"],
                metadata={"tier": move["to"], "moved_from": move["from"], "moved_at": move["when"],
                          "sha256": move["sha256"], "uri": dg.MetadataValue.url(move["uri"])},
            ))
        for release in report.landing_releases:
            context.log.info(f"released the landing images of {release['plate']}: {release['files']} files, "
                             f"{release['bytes']} bytes (verified copy in {release['tier']!r})")
            context.log_event(dg.AssetObservation(
                asset_key=dg.AssetKey("raw_images"), partition=release["plate"],
                metadata={"landing_released_at": release["released_at"], "landing": release["landing"],
                          "landing_files_released": release["files"], "landing_bytes_released": release["bytes"],
                          "tier": release["tier"], "sha256": release["data_version"], "policy": release["policy"]},
            ))
        if report.failures:
            raise dg.Failure("lifecycle problems (nothing was lost; the sources are kept):\n" + "\n".join(report.failures))

    @dg.job(name="lifecycle_job", description="Move stored partitions to their next storage tier as they age.")
    def lifecycle_job():
        lifecycle_step()

    schedule = dg.ScheduleDefinition(
        name="lifecycle_schedule", job=lifecycle_job, cron_schedule="0 2 * * *",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Daily (02:00): move partitions whose time in a tier is up to the next tier of their lifecycle.",
    )

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name="release_transient_levels",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After a successful plate run, delete transient levels whose readers are all made.",
    )
    def release_transient_levels(context: dg.RunStatusSensorContext, storage: MdpStorage):
        plate = context.dagster_run.tags.get("dagster/partition")
        if context.dagster_run.job_name != PLATE_JOB or not plate:
            return dg.SkipReason("not a plate run")
        released = release_consumed(context.instance, storage, consumers, plates=[plate])
        return dg.SkipReason("; ".join(released) or f"nothing to release for {plate}")

    return lifecycle_job, schedule, release_transient_levels
