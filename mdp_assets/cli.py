"""`mdp`: the data manager's command line.

  mdp demo [--plates N]   write demo plates into the landing zone and materialize every level (skips
                          what is already materialized and unchanged), then print the summary
  mdp summary             the summary table: plate, level, rows or files, bytes, where stored
  mdp demo-plate BARCODE  write one more demo plate into the landing zone (the sensor picks it up)
  mdp reprocess [PLATE..] materialize exactly the stale levels (changed code or parameters, changed inputs)
  mdp catalog [--query NAME | --sql SQL | --rebuild]
                          what is stored where: bytes by tier and level, by plate, problems, or free SQL
  mdp provenance PLATE LEVEL [--json]
                          how a level of a plate was made, back to the raw image files
  mdp verify              re-read every stored file; exit 1 naming any missing or corrupt one
  mdp lifecycle [--as-of ISO] [--dry-run]
                          move partitions that are due to their next tier (what lifecycle_job does daily)
  mdp pin PLATE [--reason TEXT] / mdp unpin PLATE
                          keep a plate in its fast tier whatever its age
  mdp loaddata FOLDER -o OUT.csv [--pe2loaddata-config CONFIG.yml] [--path-name P]
                          a CellProfiler LoadData CSV for a plate folder (pe2loaddata's layout for
                          Phenix plates with a Harmony index and a pe2loaddata configuration)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import dagster as dg

from mdp_assets.errors import MdpError

DEFAULT_DATA_ROOT = ".mdp/data"


def _storage():
    from mdp_assets.storage.resource import MdpStorage

    return MdpStorage(data_root=os.environ.get("MDP_DATA_ROOT", DEFAULT_DATA_ROOT))


def _instance() -> dg.DagsterInstance:
    if not os.environ.get("DAGSTER_HOME"):
        raise MdpError("DAGSTER_HOME is not set; run through `make demo` or export DAGSTER_HOME=$PWD/.mdp/dagster_home")
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.get()


def _human_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(count)


def summary_rows(instance: dg.DagsterInstance, defs: dg.Definitions, plates: list[str], storage) -> list[list[str]]:
    from mdp_assets.services.instance_status import latest_status

    graph = defs.resolve_asset_graph()
    keys = [k for k in graph.toposorted_asset_keys if k.path[-1] != "storage_costs"]
    rows = []
    for plate in plates:
        for key in keys:
            if graph.get(key).partitions_def is None:
                continue
            rows.append(_summary_row(latest_status(instance, key, plate), plate, key, storage))
    for key in keys:
        if graph.get(key).partitions_def is None:
            rows.append(_summary_row(latest_status(instance, key, None), "(all plates)", key, storage))
    return rows


def print_summary(instance: dg.DagsterInstance, defs: dg.Definitions, plates: list[str], storage) -> None:
    print(format_table(["plate", "level", "rows or files", "bytes", "where stored"],
                       summary_rows(instance, defs, plates, storage)))


def _summary_row(status, plate: str, key: dg.AssetKey, storage) -> list[str]:
    from mdp_assets.storage.io_manager import locate, partition_key

    if status is None:
        return [plate, key.to_user_string(), "not materialized", "-", "-"]
    rows = status.value("rows")
    count = f"{rows} rows" if rows is not None else f"{status.value('files')} files"
    partition = None if plate == "(all plates)" else plate
    found = locate(storage, key.path[-1], partition)
    if found is None:
        where = "missing from every tier of its lifecycle (mdp verify)"
    elif found[1].get("released_at"):
        where = f"{found[0]}: released (transient level; provenance kept)"
    else:
        where = f"{found[0]}: {storage.tier(found[0]).uri(partition_key(key, partition))}"
    return [plate, key.to_user_string(), count, _human_bytes(status.value("bytes")), where]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def run_demo(plate_count: int) -> int:
    from mdp_assets.definitions import deployment_definitions
    from mdp_assets.plates.demo import demo_specs, write_demo_plate
    from mdp_assets.services.operations import materialize_stale

    storage = _storage()
    instance = _instance()
    defs = deployment_definitions(storage)
    plates = []
    for spec in demo_specs(plate_count):
        folder = write_demo_plate(storage.landing_path, spec)
        plates.append(spec.barcode)
        print(f"demo plate {spec.barcode}: {folder}")
    instance.add_dynamic_partitions("plates", [p for p in plates if not instance.has_dynamic_partition("plates", p)])
    if not _report_outcomes(materialize_stale(instance, defs, storage, plates)):
        return 1
    print()
    print_summary(instance, defs, plates, storage)
    return 0


def _report_outcomes(outcomes) -> bool:
    failed = [o for o in outcomes if not o.success]
    for outcome in failed:
        print(f"{outcome.plate}: the run failed; see `make dev` (run {outcome.run_id})", file=sys.stderr)
    return not failed


def run_reprocess(plates: list[str]) -> int:
    from mdp_assets.definitions import deployment_definitions
    from mdp_assets.services.operations import materialize_stale

    instance, storage = _instance(), _storage()
    defs = deployment_definitions(storage)
    plates = plates or sorted(instance.get_dynamic_partitions("plates"))
    return 0 if _report_outcomes(materialize_stale(instance, defs, storage, plates)) else 1


def run_catalog(query_name: str | None, sql: str | None, rebuild: bool) -> int:
    from mdp_assets.storage import catalog

    storage = _storage()
    if rebuild:
        from mdp_assets.definitions import deployment_definitions
        from mdp_assets.services.operations import rebuild_catalog

        count = rebuild_catalog(_instance(), deployment_definitions(storage), storage)
        print(f"catalog rebuilt: {count} stored files")
    names = [query_name] if query_name else ([] if sql else ["by-tier-and-level", "totals"])
    for name in names:
        if name not in catalog.CANNED_QUERIES:
            raise MdpError(f"unknown query {name!r}; known: {sorted(catalog.CANNED_QUERIES)}")
        columns, rows = catalog.query(storage.catalog_path, catalog.CANNED_QUERIES[name])
        print(f"\n{name}:\n" + format_table(columns, [[_cell(v) for v in r] for r in rows]))
    if sql:
        columns, rows = catalog.query(storage.catalog_path, sql)
        print(format_table(columns, [[_cell(v) for v in r] for r in rows]))
    return 0


def _cell(value) -> str:
    return "-" if value is None else str(value)


def run_provenance(plate: str, level: str, as_json: bool) -> int:
    import json

    from mdp_assets.services.operations import explain_chain, provenance_chain

    chain = provenance_chain(_instance(), plate, level)
    if as_json:
        print(json.dumps(chain, indent=1, default=str))
        return 0
    from mdp_assets.storage.io_manager import read_stored_table

    raw = next((r for r in chain if r["asset"] == "raw_images"), None)
    table = read_stored_table(_storage(), "raw_images", raw["partition"]) if raw is not None else None
    print(explain_chain(chain, table))
    return 0


def run_verify() -> int:
    from mdp_assets.storage import catalog

    checked, problems = catalog.verify(_storage().catalog_path)
    for problem in problems:
        print(f"mdp verify: {problem}", file=sys.stderr)
    print(f"{checked} stored files verified; {len(problems)} missing or corrupt")
    return 1 if problems else 0


def run_summary() -> int:
    from mdp_assets.definitions import deployment_definitions

    instance, storage = _instance(), _storage()
    defs = deployment_definitions(storage)
    print_summary(instance, defs, sorted(instance.get_dynamic_partitions("plates")), storage)
    return 0


def run_lifecycle_command(as_of: str | None, dry_run: bool) -> int:
    from mdp_assets.definitions import consumers_of, deployment_definitions
    from mdp_assets.services.operations import apply_lifecycle, describe_move

    storage = _storage()
    consumers = consumers_of(list(deployment_definitions(storage).assets))
    report = apply_lifecycle(_instance(), storage, consumers, as_of, dry_run)
    for line in [*report.released, *report.notes]:
        print(line)
    for move in report.moves:
        print(describe_move(move))
    for failure in report.failures:
        print(f"mdp lifecycle: {failure}", file=sys.stderr)
    return 1 if report.failures else 0


def run_pin(plate: str, reason: str | None, unpin: bool) -> int:
    from mdp_assets.storage import catalog

    storage = _storage()
    if unpin:
        catalog.unpin(storage.catalog_path, plate)
        print(f"{plate} unpinned: the lifecycle may move it again")
    else:
        catalog.pin(storage.catalog_path, plate, reason or "")
        print(f"{plate} pinned: it stays in its fast tier")
    return 0


def run_demo_plate(barcode: str, seed: int) -> int:
    from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate

    folder = write_demo_plate(_storage().landing_path, DemoPlateSpec(barcode=barcode, seed=seed))
    print(f"demo plate {barcode} written to {folder}")
    return 0


def run_loaddata(folder: Path, output: Path, config: Path | None, path_name: str | None) -> int:
    from mdp_assets.checksums import atomic_path
    from mdp_assets.plates.harmony import find_index_file, read_harmony_index
    from mdp_assets.plates.inventory import PlateFolder, inventory_plate
    from mdp_assets.engines.cellprofiler.loaddata import loaddata_from_harmony, loaddata_from_raw_images, read_pe2loaddata_config

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mdp", description="The microscopy data playbook, on Dagster.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="demo plates through every level, then a summary")
    demo.add_argument("--plates", type=int, default=2, help="how many demo plates (default 2)")
    commands.add_parser("summary", help="plate, level, rows or files, bytes, where stored")
    demo_plate = commands.add_parser("demo-plate", help="write one demo plate into the landing zone")
    demo_plate.add_argument("barcode")
    demo_plate.add_argument("--seed", type=int, default=99)
    loaddata = commands.add_parser("loaddata", help="a CellProfiler LoadData CSV for a plate folder")
    loaddata.add_argument("folder", type=Path)
    loaddata.add_argument("-o", "--output", type=Path, required=True)
    loaddata.add_argument("--pe2loaddata-config", type=Path, help="pe2loaddata config.yml (channels, metadata)")
    loaddata.add_argument("--path-name", help="PathName_ value to write (default: the images folder)")
    reprocess = commands.add_parser("reprocess", help="materialize exactly the stale levels")
    reprocess.add_argument("plates", nargs="*", help="plates (default: every registered plate)")
    catalog_cmd = commands.add_parser("catalog", help="what is stored where (DuckDB)")
    catalog_cmd.add_argument("--query", help="by-tier-and-level, by-plate, problems or totals")
    catalog_cmd.add_argument("--sql", help="free SQL over the table stored_files")
    catalog_cmd.add_argument("--rebuild", action="store_true", help="rebuild from the event log and the tiers first")
    provenance = commands.add_parser("provenance", help="how a level of a plate was made")
    provenance.add_argument("plate")
    provenance.add_argument("level")
    provenance.add_argument("--json", action="store_true")
    commands.add_parser("verify", help="re-read every stored file and compare checksums")
    lifecycle = commands.add_parser("lifecycle", help="move partitions that are due to their next tier")
    lifecycle.add_argument("--as-of", help="judge ages as of this ISO time (plan ahead with --dry-run)")
    lifecycle.add_argument("--dry-run", action="store_true")
    pin = commands.add_parser("pin", help="keep a plate in its fast tier")
    pin.add_argument("plate")
    pin.add_argument("--reason")
    unpin = commands.add_parser("unpin", help="let the lifecycle move a plate again")
    unpin.add_argument("plate")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args.plates)
        if args.command == "demo-plate":
            return run_demo_plate(args.barcode, args.seed)
        if args.command == "loaddata":
            return run_loaddata(args.folder, args.output, args.pe2loaddata_config, args.path_name)
        if args.command == "reprocess":
            return run_reprocess(args.plates)
        if args.command == "catalog":
            return run_catalog(args.query, args.sql, args.rebuild)
        if args.command == "provenance":
            return run_provenance(args.plate, args.level, args.json)
        if args.command == "verify":
            return run_verify()
        if args.command == "lifecycle":
            return run_lifecycle_command(args.as_of, args.dry_run)
        if args.command in ("pin", "unpin"):
            return run_pin(args.plate, getattr(args, "reason", None), args.command == "unpin")
        return run_summary()
    except MdpError as exc:
        print(f"mdp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
