"""Verification of everything stored: re-read every cataloged file wherever its tier keeps it and compare
its sha256. `verify_job` runs the `stored_files_intact` check of every level (weekly, `verify_schedule`);
a missing, corrupt or uncommitted file fails its level's check, named in the check's metadata, and is
flagged in the catalog. The check can run for any subset of levels, alone or with their assets."""

from collections import defaultdict

import dagster as dg

from mdp_assets.services.catalog import verify_stored_files
from mdp_assets.storage.resource import MdpStorage

CHECK_NAME = "stored_files_intact"


def build_verify_checks(asset_keys: list[dg.AssetKey]) -> dg.AssetChecksDefinition:
    @dg.multi_asset_check(
        specs=[dg.AssetCheckSpec(CHECK_NAME, asset=key, description="every stored file exists with its sha256")
               for key in asset_keys],
        name="verify_stored_files",
        can_subset=True,
    )
    def verify_stored_files_check(context: dg.AssetCheckExecutionContext, storage: MdpStorage):
        checked, problems = verify_stored_files(storage)
        context.log.info(f"verified {checked} stored files; {len(problems)} problem(s)")
        by_asset = defaultdict(list)
        for problem in problems:
            by_asset[problem.asset_key].append(problem)
        for check_key in context.selected_asset_check_keys:
            found = by_asset.get(check_key.asset_key.to_user_string(), [])
            yield dg.AssetCheckResult(
                asset_key=check_key.asset_key,
                check_name=CHECK_NAME,
                passed=not found,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "problems": len(found),
                    "files": dg.MetadataValue.md("\n".join(f"- {p}" for p in found[:200]) or "none"),
                },
            )

    return verify_stored_files_check


def build_verify_job_and_schedule(checks: dg.AssetChecksDefinition) -> tuple[object, dg.ScheduleDefinition]:
    job = dg.define_asset_job(
        "verify_job",
        selection=dg.AssetSelection.checks(checks),
        description="Re-read every stored file of every level and compare its sha256 with the catalog.",
    )
    schedule = dg.ScheduleDefinition(
        name="verify_schedule", job=job, cron_schedule="0 3 * * 0", default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Weekly (Sunday 03:00): verify every stored file of every level against its checksum.",
    )
    return job, schedule
