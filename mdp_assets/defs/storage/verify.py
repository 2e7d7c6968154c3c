"""Verification of everything stored: re-read every cataloged file wherever its tier keeps it and compare
its sha256. `verify_job` runs the `stored_files_intact` check of every level (weekly, `verify_schedule`);
a missing, corrupt or uncommitted file fails its level's check, named in the check's metadata, and is
flagged in the catalog. The check can run for any subset of levels, alone or with their assets."""

from collections import defaultdict

import dagster as dg

from mdp_assets.services.catalog import verify_stored_files
from mdp_assets.storage import catalog
from mdp_assets.storage.resource import MdpStorage

CHECK_NAME = "stored_files_intact"


def problems_table(problems: list) -> dg.TableMetadataValue:
    """The damaged files as a table: plate, uri, what is wrong."""
    return dg.MetadataValue.table(
        [dg.TableRecord({"partition": p.partition or "", "uri": p.uri, "status": p.status}) for p in problems[:200]],
        schema=dg.TableSchema(columns=[dg.TableColumn("partition", "string"), dg.TableColumn("uri", "string"),
                                       dg.TableColumn("status", "string")]),
    )


def build_verify_checks(asset_keys: list[dg.AssetKey]) -> dg.AssetChecksDefinition:
    @dg.multi_asset_check(
        specs=[dg.AssetCheckSpec(CHECK_NAME, asset=key,
                                 description="every stored file of every plate of this level exists with its sha256 "
                                 "(runs weekly in verify_job, and with each materialization). Until its first run "
                                 "the UI shows it as 'Not evaluated': nothing has been checked yet, nothing failed")
               for key in asset_keys],
        name="verify_stored_files",
        can_subset=True,
    )
    def verify_stored_files_check(context: dg.AssetCheckExecutionContext, storage: MdpStorage):
        selected = sorted(context.selected_asset_check_keys, key=lambda k: k.asset_key.to_user_string())
        levels = [key.asset_key.to_user_string() for key in selected]
        checked, problems = verify_stored_files(storage, levels)  # only the levels this run checks
        context.log.info(f"verified {checked} stored files of {', '.join(levels)}; {len(problems)} problem(s)")
        by_asset = defaultdict(list)
        for problem in problems:
            by_asset[problem.asset_key].append(problem)
        files = verify_counts(storage, levels)
        for check_key in selected:
            level = check_key.asset_key.to_user_string()
            found = by_asset.get(level, [])
            yield dg.AssetCheckResult(
                asset_key=check_key.asset_key,
                check_name=CHECK_NAME,
                passed=not found,
                severity=dg.AssetCheckSeverity.ERROR,
                description=(f"{files.get(level, 0)} stored files re-read: all match their sha256" if not found else
                             f"{len(found)} of {files.get(level, 0)} stored files are missing or damaged"),
                metadata={"files_checked": files.get(level, 0), "problems": len(found),
                          "damaged_files": problems_table(found)},
            )

    return verify_stored_files_check


def verify_counts(storage: MdpStorage, levels: list[str]) -> dict[str, int]:
    """How many cataloged files each level has."""
    if not storage.catalog_path.exists():
        return {}
    _, rows = catalog.query(storage.catalog_path, "SELECT asset_key, count(*) FROM stored_files GROUP BY asset_key")
    return {level: count for level, count in rows if level in levels}


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
