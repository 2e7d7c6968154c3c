"""`mdp`: the data manager's command line, thin commands over the services the assets use.

Every command reads the deployment's configuration (`MDP_CONFIG`, see `mdp config show`) and its Dagster
instance. Commands that make, move or delete data submit runs to the instance (the run queue applies, the
runs appear in the UI) and wait for them unless told `--no-wait`; the others read.

  mdp config show [--json]       the resolved configuration and where each value came from
  mdp config instance            the dagster.yaml that matches the configuration's run queue
  mdp demo [--plates N]          demo plates into the landing zone, registered, every level made; then the summary
  mdp demo-plate BARCODE         one more demo plate in the landing zone (the intake sensor picks it up)
  mdp register PLATE|FOLDER      validate a plate folder in the landing zone and register it
  mdp run PLATE [--levels L ..]  make a plate's stale levels (or the levels named), showing progress
  mdp reprocess [PLATE ..]       make exactly the stale levels of every plate (or those named), then the consensus
  mdp summary                    plate, level, rows or files, bytes, where stored; mAP per treatment
  mdp catalog [--query NAME | --sql SQL | --rebuild]
  mdp provenance PLATE LEVEL [--json]
  mdp verify                     re-read every stored file in its tier; exit 1 naming any missing or corrupt one
  mdp repair [PLATE] [--level L ..]  restore damaged partitions from a verified copy, else make them again
  mdp lifecycle [--as-of ISO] [--dry-run]
  mdp pin PLATE [--reason TEXT] / mdp unpin PLATE
  mdp reclassify PLATE --origin O --reason TEXT [--identifiable-patient-data yes|no] [--released yes|no]
  mdp publish PLATE.. --to zenodo|figshare|idr [--levels L ..] [--images|--no-images] [--license SPDX]
                                 [--title T] [--creator "Family, Given" ..] [--upload [--publish-record]]
  mdp upload-deposit DEPOSIT_ID [--zenodo-url URL] [--publish-record]
  mdp loaddata FOLDER -o OUT.csv [--pe2loaddata-config CONFIG.yml] [--path-name P]
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import sys
from pathlib import Path

import dagster as dg
import yaml

from mdp_assets.checksums import atomic_path
from mdp_assets.config import Deployment, StepSettings, load_deployment
from mdp_assets.definitions import build_definitions
from mdp_assets.engines.cellprofiler.loaddata import (
    loaddata_from_harmony,
    loaddata_from_raw_images,
    read_pe2loaddata_config,
)
from mdp_assets.errors import MdpError
from mdp_assets.plates.demo import DemoPlateSpec, demo_specs, write_demo_plate
from mdp_assets.plates.harmony import find_index_file, read_harmony_index
from mdp_assets.plates.inventory import PlateFolder, inventory_plate
from mdp_assets.plates.manifest import check_barcode
from mdp_assets.services import runs
from mdp_assets.services.catalog import rebuild_catalog, verify_stored_files
from mdp_assets.services.instance import instance_config
from mdp_assets.services.lifecycle import apply_lifecycle, describe_move, release_consumed
from mdp_assets.services.provenance import explain_chain, provenance_chain
from mdp_assets.services.publish import publish, upload_deposit, verify_deposits
from mdp_assets.services.recovery import fail_dead_runs, recover
from mdp_assets.services.repair import repair
from mdp_assets.services.reclassify import reclassify_plate
from mdp_assets.services.registration import add_partitions, register_plate
from mdp_assets.services.reprocess import (CONSENSUS_JOB, PlateWork, consensus_reason, consumers_of, plan_plate,
                                           plates_without_well_profiles)
from mdp_assets.services.summary import format_table, quality_table, summary_table
from mdp_assets.storage import catalog
from mdp_assets.storage.resource import MdpStorage


class Platform:
    """What every command works on: the deployment, its storage, its definitions and its instance."""

    def __init__(self, deployment: Deployment):
        self.deployment = deployment
        self.storage = MdpStorage.from_deployment(deployment)
        self._defs: dg.Definitions | None = None
        self._instance: dg.DagsterInstance | None = None

    @property
    def defs(self) -> dg.Definitions:
        if self._defs is None:
            self._defs = build_definitions(self.deployment, storage=self.storage)
        return self._defs

    @property
    def instance(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = runs.instance_for(self.deployment)
        return self._instance

    def plates(self, named: list[str]) -> list[str]:
        known = sorted(self.instance.get_dynamic_partitions("plates"))
        unknown = sorted(set(named) - set(known))
        if unknown:
            raise MdpError(f"unknown plate(s) {unknown}; registered plates: {known or 'none'}")
        return named or known

    def daemon(self, wait: bool):
        """While waiting for runs, a daemon must serve the run queue (started here if none is running)."""
        return runs.daemon_if_needed(self.deployment, self.instance, print) if wait else contextlib.nullcontext()

    def submit_and_wait(self, requests: list[runs.RunRequest], command: str, wait: bool) -> list[runs.RunOutcome]:
        run_ids = []
        for request in requests:
            run_id = runs.submit(self.deployment, request, command)
            print(f"submitted {request.job} for {request.plate or 'all plates'}: run {run_id}")
            run_ids.append(run_id)
        if not wait or not run_ids:
            return []
        outcomes = runs.wait(self.instance, run_ids, print)
        for outcome in outcomes:
            if outcome.success:
                print(f"run {outcome.run_id} ({outcome.job} {outcome.plate or 'all plates'}) succeeded")
                continue
            print(f"mdp: run {outcome.run_id} ({outcome.job} {outcome.plate or 'all plates'}) ended {outcome.status}:",
                  file=sys.stderr)
            for error in outcome.errors:
                print(f"  {error}", file=sys.stderr)
        return outcomes


def make_levels(platform: Platform, works: list[PlateWork], command: str, wait: bool) -> int:
    """Submit a run per plate with work to do; when waiting, then the consensus if it became stale."""
    for note in fail_dead_runs(platform.instance, platform.storage) + platform.storage.clean_dead_staging():
        print(note)
    with platform.daemon(wait):
        return _make_levels(platform, works, command, wait)


def _make_levels(platform: Platform, works: list[PlateWork], command: str, wait: bool) -> int:
    for work in works:
        if not work.levels:
            print(f"{work.plate}: every level is materialized and unchanged; nothing to do")
        else:
            print(f"{work.plate}: {len(work.levels)} level(s) to make: " +
                  "; ".join(f"{level} ({work.reasons.get(level, '')})" for level in work.levels))
    outcomes = platform.submit_and_wait([w.request() for w in works if w.levels], command, wait)
    if not wait:
        print("not waiting: follow the runs in the UI (Runs), then `mdp reprocess` for the consensus")
        return 0
    if not all(o.success for o in outcomes):
        return 1
    consumers = consumers_of(platform.defs.assets or [])
    made = [o.plate for o in outcomes if o.plate]
    for line in release_consumed(platform.instance, platform.storage, consumers, plates=made) if made else []:
        print(line)
    reason = consensus_reason(platform.instance, platform.defs)
    waiting_for = plates_without_well_profiles(platform.instance)
    if reason and waiting_for:
        print(f"consensus_profiles: {reason}; it waits until every plate has well_profiles (not yet: {waiting_for})")
    elif reason:
        print(f"consensus_profiles: {reason}")
        outcomes = platform.submit_and_wait([runs.RunRequest(CONSENSUS_JOB)], command, wait)
        return 0 if all(o.success for o in outcomes) else 1
    return 0


def run_demo(platform: Platform, plate_count: int, wait: bool) -> int:
    plates = []
    for spec in demo_specs(plate_count):
        folder = write_demo_plate(platform.storage.landing_path, spec)
        register_plate(platform.storage, spec.barcode)
        plates.append(spec.barcode)
        print(f"demo plate {spec.barcode}: {folder}")
    add_partitions(platform.instance, plates)
    works = [plan_plate(platform.instance, platform.defs, platform.storage, plate) for plate in plates]
    status = make_levels(platform, works, "demo", wait)
    if status == 0 and wait:
        # The cost report too, so the UI's storage_costs page has its chart after a demo (a schedule refreshes it).
        with platform.daemon(wait):
            outcomes = platform.submit_and_wait([runs.RunRequest("storage_costs_job")], "demo", wait)
        status = 0 if all(o.success for o in outcomes) else 1
    if status == 0 and wait:
        print()
        print(summary_table(platform.instance, platform.defs, plates, platform.storage))
        print()
        print(quality_table(platform.instance, plates, platform.storage))
    return status


def run_summary(platform: Platform) -> int:
    plates = platform.plates([])
    print(summary_table(platform.instance, platform.defs, plates, platform.storage))
    print()
    print(quality_table(platform.instance, plates, platform.storage))
    return 0


def run_register(platform: Platform, target: str, allow_incomplete: bool = False) -> int:
    barcode = check_barcode(Path(target).name if "/" in target else target, "register")
    landing = platform.storage.landing_path
    if "/" in target and Path(target).resolve().parent != landing.resolve():
        raise MdpError(f"{target} is not a plate folder in the landing zone {landing}; copy it there first")
    settings = StepSettings.from_config(platform.deployment.config)
    plate = register_plate(platform.storage, barcode, allow_incomplete, settings)
    add_partitions(platform.instance, [barcode])
    incomplete = (f", taken incomplete with {plate.accepted_image_count} of {plate.manifest.expected_image_count} "
                  "images" if plate.accepted_image_count is not None else "")
    print(f"plate {barcode} registered ({plate.manifest.origin}, {len(plate.platemap)} platemap wells{incomplete}); "
          f"`mdp run {barcode}` makes its levels")
    return 0


def run_run(platform: Platform, plate: str, levels: list[str] | None, wait: bool) -> int:
    platform.plates([plate])
    work = plan_plate(platform.instance, platform.defs, platform.storage, plate, levels)
    return make_levels(platform, [work], "run", wait)


def run_reprocess(platform: Platform, plates: list[str], wait: bool) -> int:
    works = [plan_plate(platform.instance, platform.defs, platform.storage, p) for p in platform.plates(plates)]
    return make_levels(platform, works, "reprocess", wait)


def run_catalog(platform: Platform, query_name: str | None, sql: str | None, rebuild: bool) -> int:
    path = platform.storage.catalog_path
    if rebuild:
        print(f"catalog rebuilt: {rebuild_catalog(platform.instance, platform.storage)} stored files")
    names = [query_name] if query_name else ([] if sql else ["by-tier-and-level", "raw-images", "totals"] +
                                             (["deposits"] if catalog.has_deposits(path) else []))
    for name in names:
        if name not in catalog.CANNED_QUERIES:
            raise MdpError(f"unknown query {name!r}; known: {sorted(catalog.CANNED_QUERIES)}")
        columns, rows = catalog.query(path, catalog.CANNED_QUERIES[name])
        print(f"\n{name}:\n" + format_table(columns, [[_cell(v) for v in r] for r in rows]))
    if sql:
        columns, rows = catalog.query(path, sql)
        print(format_table(columns, [[_cell(v) for v in r] for r in rows]))
    return 0


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def run_provenance(platform: Platform, plate: str, level: str, as_json: bool) -> int:
    check_barcode(plate, "provenance")
    chain = provenance_chain(platform.instance, plate, level)
    if as_json:
        print(json.dumps(chain, indent=1, default=str))
        return 0
    raw = next((r for r in chain if r["asset"] == "raw_images"), None)
    table = platform.storage.store().read("raw_images", raw["partition"]).read_table() if raw is not None else None
    print(explain_chain(chain, table))
    return 0


def run_verify(platform: Platform) -> int:
    for note in recover(platform.instance, platform.storage):
        print(f"mdp verify: {note}")
    checked, problems = verify_stored_files(platform.storage)
    for problem in problems:
        print(f"mdp verify: {problem}", file=sys.stderr)
    print(f"{checked} stored files verified; {len(problems)} missing, corrupt or uncommitted")
    published, damaged = verify_deposits(platform.storage)
    for problem in damaged:
        print(f"mdp verify: {problem}", file=sys.stderr)
    if published:
        print(f"{published} files of published deposits verified; {len(damaged)} missing or corrupt")
    return 1 if problems or damaged else 0


def run_repair(platform: Platform, plate: str | None, levels: list[str] | None, wait: bool) -> int:
    for note in recover(platform.instance, platform.storage):
        print(note)
    report = repair(platform.instance, platform.defs, platform.storage, platform.plates([plate] if plate else []),
                    levels)
    for line in report.restored:
        print(line)
    if not report.restored and not report.remake:
        print(f"nothing to repair: {len(report.intact)} stored copies checked, every file matches its sha256")
    if report.remake:
        return make_levels(platform, report.remake, "repair", wait)
    return 0


def run_lifecycle(platform: Platform, as_of: str | None, dry_run: bool, wait: bool) -> int:
    if dry_run:
        report = apply_lifecycle(platform.instance, platform.storage, consumers_of(platform.defs.assets or []), as_of, True)
        for line in report.notes:
            print(line)
        return 0
    config = {"ops": {"lifecycle_step": {"config": {"as_of": as_of, "dry_run": False}}}}
    with platform.daemon(wait):
        outcomes = platform.submit_and_wait([runs.RunRequest("lifecycle_job", run_config=json.dumps(config))],
                                            "lifecycle", wait)
    for outcome in outcomes:
        for record in platform.instance.all_logs(outcome.run_id):
            if record.is_dagster_event and record.dagster_event.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
                observation = record.dagster_event.event_specific_data.asset_observation
                meta = {k: getattr(v, "value", v) for k, v in observation.metadata.items()}
                if "landing_released_at" in meta:
                    print(f"released the landing images of {observation.partition}: {meta['landing_files_released']} "
                          f"files, {meta['landing_bytes_released']} bytes (verified copy in {meta['tier']})")
                    continue
                print(describe_move({"asset": observation.asset_key.to_user_string(), "partition": observation.partition,
                                     "from": meta.get("moved_from"), "to": meta.get("tier"),
                                     "sha256": meta.get("sha256")}))
    return 0 if all(o.success for o in outcomes) else 1


def run_pin(platform: Platform, plate: str, reason: str | None, unpin: bool) -> int:
    check_barcode(plate, "pin")
    path = platform.storage.catalog_path
    if unpin:
        catalog.unpin(path, plate)
        print(f"{plate} unpinned: the lifecycle may move it again")
    else:
        catalog.pin(path, plate, reason or "")
        print(f"{plate} pinned: it stays in its fast tier")
    return 0


def run_reclassify(platform: Platform, plate: str, origin: str, reason: str, identifiable: str | None,
                   released: str | None) -> int:
    flag = {"yes": True, "no": False, None: None}
    result = reclassify_plate(platform.storage, plate, origin, reason, getpass.getuser(),
                              flag[identifiable], flag[released], platform.instance)
    for line in result.lines():
        print(line)
    return 0


def run_publish(platform: Platform, args: argparse.Namespace) -> int:
    for plate in args.plates:
        check_barcode(plate, "publish")
    published = publish(platform.storage, args.plates, args.to, args.levels, args.images, args.license, args.title,
                        args.creator, args.description or "", getpass.getuser(), platform.instance)
    for line in published.lines():
        print(line)
    if args.upload:
        return run_upload(platform, published.deposit_id, args.zenodo_url, args.publish_record)
    return 0


def run_upload(platform: Platform, deposit_id: str, zenodo_url: str, publish_record: bool) -> int:
    uploaded = upload_deposit(platform.storage, deposit_id, zenodo_url, publish_record)
    print(f"deposit {deposit_id} uploaded to {zenodo_url}: deposition {uploaded['deposition_id']} ({uploaded['state']}"
          f"{', DOI ' + str(uploaded['doi']) if uploaded.get('doi') else ''}); recorded in the catalog")
    return 0


def run_demo_plate(platform: Platform, barcode: str, seed: int) -> int:
    check_barcode(barcode, "demo-plate")  # a folder of the landing zone: `../../x` would write outside it
    folder = write_demo_plate(platform.storage.landing_path, DemoPlateSpec(barcode=barcode, seed=seed))
    print(f"demo plate {barcode} written to {folder}")
    return 0


def run_loaddata(folder: Path, output: Path, config: Path | None, path_name: str | None) -> int:
    plate = PlateFolder.open(folder)
    index = find_index_file(plate.images_dir)
    if config is not None:
        if index is None:
            raise MdpError("a pe2loaddata configuration needs a Harmony Index.idx.xml or Index.xml", path=plate.images_dir)
        plate_id, images = read_harmony_index(index)
        channels, fields = read_pe2loaddata_config(config)
        table = loaddata_from_harmony(images, plate_id or plate.barcode, channels, fields,
                                      path_name or str(plate.images_dir.resolve()))
    else:
        table = loaddata_from_raw_images(inventory_plate(plate))
    with atomic_path(output) as partial:
        table.to_csv(partial, index=False, lineterminator="\n")
    print(f"{len(table)} image sets written to {output}")
    return 0


def run_config(deployment: Deployment, what: str, as_json: bool) -> int:
    if what == "instance":
        print(yaml.safe_dump(instance_config(deployment), sort_keys=False), end="")
        return 0
    rows = deployment.describe()
    if as_json:
        print(json.dumps({"file": str(deployment.path) if deployment.path else None,
                          "values": {k: {"value": v, "source": s} for k, v, s in rows}}, indent=1, default=str))
        return 0
    print(f"configuration: {deployment.path or 'built-in defaults (no MDP_CONFIG, no ~/.mdp/mdp.yaml)'}")
    print(format_table(["key", "value", "from"], [[k, json.dumps(v) if not isinstance(v, str) else v, s]
                                                  for k, v, s in rows]))
    return 0


def parser() -> argparse.ArgumentParser:
    main_parser = argparse.ArgumentParser(prog="mdp", description="The microscopy data playbook, on Dagster.")
    main_parser.add_argument("--config", type=Path, help="the deployment's mdp.yaml (default: $MDP_CONFIG)")
    commands = main_parser.add_subparsers(dest="command", required=True)
    config = commands.add_parser("config", help="the deployment's configuration")
    config.add_argument("what", choices=["show", "instance"])
    config.add_argument("--json", action="store_true")

    def waiting(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("--no-wait", dest="wait", action="store_false", help="submit the runs and return")
        return sub

    demo = waiting(commands.add_parser("demo", help="demo plates through every level, then a summary"))
    demo.add_argument("--plates", type=int, default=2, help="how many demo plates (default 2)")
    commands.add_parser("summary", help="plate, level, rows or files, bytes, where stored")
    demo_plate = commands.add_parser("demo-plate", help="write one demo plate into the landing zone")
    demo_plate.add_argument("barcode")
    demo_plate.add_argument("--seed", type=int, default=99)
    register = commands.add_parser("register", help="validate and register a plate folder of the landing zone")
    register.add_argument("plate", help="the plate's barcode, or its folder in the landing zone")
    register.add_argument("--allow-incomplete", action="store_true",
                          help="take a plate with fewer images than its manifest expects, as it is")
    run = waiting(commands.add_parser("run", help="make a plate's stale levels, or the levels named"))
    run.add_argument("plate")
    run.add_argument("--levels", nargs="+", help="make these levels whatever their state")
    reprocess = waiting(commands.add_parser("reprocess", help="make exactly the stale levels"))
    reprocess.add_argument("plates", nargs="*", help="plates (default: every registered plate)")
    catalog_cmd = commands.add_parser("catalog", help="what is stored where (DuckDB)")
    catalog_cmd.add_argument("--query", help="by-tier-and-level, by-plate, raw-images, problems or totals")
    catalog_cmd.add_argument("--sql", help="SQL over the table stored_files")
    catalog_cmd.add_argument("--rebuild", action="store_true", help="rebuild from the event log and the tiers first")
    provenance = commands.add_parser("provenance", help="how a level of a plate was made")
    provenance.add_argument("plate")
    provenance.add_argument("level")
    provenance.add_argument("--json", action="store_true")
    commands.add_parser("verify", help="re-read every stored file and compare checksums")
    repair_cmd = waiting(commands.add_parser("repair", help="restore damaged partitions from a verified copy, else "
                                             "make them again from upstream"))
    repair_cmd.add_argument("plate", nargs="?", help="a plate (default: every registered plate)")
    repair_cmd.add_argument("--level", "--levels", dest="levels", nargs="+", help="only these levels")
    lifecycle = waiting(commands.add_parser("lifecycle", help="move partitions that are due to their next tier"))
    lifecycle.add_argument("--as-of", help="judge ages as of this ISO time (plan ahead with --dry-run)")
    lifecycle.add_argument("--dry-run", action="store_true")
    pin = commands.add_parser("pin", help="keep a plate in its fast tier")
    pin.add_argument("plate")
    pin.add_argument("--reason")
    unpin = commands.add_parser("unpin", help="let the lifecycle move a plate again")
    unpin.add_argument("plate")
    reclassify = commands.add_parser(
        "reclassify", help="change a registered plate's origin (recorded), moving or withdrawing what may not stay")
    reclassify.add_argument("plate")
    reclassify.add_argument("--origin", required=True,
                            choices=["internal", "collaborator-academic", "collaborator-industry", "public"])
    reclassify.add_argument("--reason", required=True, help="why (recorded with who and when)")
    reclassify.add_argument("--identifiable-patient-data", choices=["yes", "no"], help="default: unchanged")
    reclassify.add_argument("--released", choices=["yes", "no"], help="default: unchanged")
    publish_cmd = commands.add_parser("publish", help="build a deposit for Zenodo, Figshare or IDR, refused where the "
                                      "plates' origin forbids it")
    publish_cmd.add_argument("plates", nargs="+")
    publish_cmd.add_argument("--to", required=True, choices=["zenodo", "figshare", "idr"])
    publish_cmd.add_argument("--levels", nargs="+", help="default: well_profiles well_embeddings consensus_profiles")
    images = publish_cmd.add_mutually_exclusive_group()
    images.add_argument("--images", dest="images", action="store_true", default=None,
                        help="include the plates' images (IDR: always, by default)")
    images.add_argument("--no-images", dest="images", action="store_false")
    publish_cmd.add_argument("--license", help="SPDX id (default: the policy's publication.license, CC-BY-4.0)")
    publish_cmd.add_argument("--title")
    publish_cmd.add_argument("--creator", action="append", help='"Family, Given"; repeat for each creator')
    publish_cmd.add_argument("--description")
    publish_cmd.add_argument("--upload", action="store_true", help="zenodo: upload the deposit once built "
                             "(token in $ZENODO_ACCESS_TOKEN)")
    publish_cmd.add_argument("--zenodo-url", default="https://zenodo.org", help="https://sandbox.zenodo.org to try")
    publish_cmd.add_argument("--publish-record", action="store_true", help="publish the Zenodo record after upload")
    upload = commands.add_parser("upload-deposit", help="upload a built Zenodo deposit through Zenodo's REST API")
    upload.add_argument("deposit_id")
    upload.add_argument("--zenodo-url", default="https://zenodo.org")
    upload.add_argument("--publish-record", action="store_true")
    loaddata = commands.add_parser("loaddata", help="a CellProfiler LoadData CSV for a plate folder")
    loaddata.add_argument("folder", type=Path)
    loaddata.add_argument("-o", "--output", type=Path, required=True)
    loaddata.add_argument("--pe2loaddata-config", type=Path, help="pe2loaddata config.yml (channels, metadata)")
    loaddata.add_argument("--path-name", help="PathName_ value to write (default: the images folder)")
    return main_parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        deployment = load_deployment(args.config)
        if args.command == "config":
            return run_config(deployment, args.what, args.json)
        if args.command == "loaddata":
            return run_loaddata(args.folder, args.output, args.pe2loaddata_config, args.path_name)
        platform = Platform(deployment)
        commands = {
            "demo": lambda: run_demo(platform, args.plates, args.wait),
            "demo-plate": lambda: run_demo_plate(platform, args.barcode, args.seed),
            "register": lambda: run_register(platform, args.plate, args.allow_incomplete),
            "run": lambda: run_run(platform, args.plate, args.levels, args.wait),
            "reprocess": lambda: run_reprocess(platform, args.plates, args.wait),
            "summary": lambda: run_summary(platform),
            "catalog": lambda: run_catalog(platform, args.query, args.sql, args.rebuild),
            "provenance": lambda: run_provenance(platform, args.plate, args.level, args.json),
            "verify": lambda: run_verify(platform),
            "repair": lambda: run_repair(platform, args.plate, args.levels, args.wait),
            "lifecycle": lambda: run_lifecycle(platform, args.as_of, args.dry_run, args.wait),
            "pin": lambda: run_pin(platform, args.plate, args.reason, False),
            "unpin": lambda: run_pin(platform, args.plate, None, True),
            "publish": lambda: run_publish(platform, args),
            "upload-deposit": lambda: run_upload(platform, args.deposit_id, args.zenodo_url, args.publish_record),
            "reclassify": lambda: run_reclassify(platform, args.plate, args.origin, args.reason,
                                                 args.identifiable_patient_data, args.released),
        }
        return commands[args.command]()
    except MdpError as exc:
        print(f"mdp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
