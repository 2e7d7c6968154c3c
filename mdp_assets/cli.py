"""`mdp`: the data manager's command line.

  mdp demo [--plates N]   write demo plates into the landing zone and materialize every level (skips
                          what is already materialized and unchanged), then print the summary
  mdp summary             the summary table: plate, level, rows or files, bytes, where stored
  mdp demo-plate BARCODE  write one more demo plate into the landing zone (the sensor picks it up)
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
    from mdp_assets.defs.storage.resources import MdpStorage

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


def summary_rows(instance: dg.DagsterInstance, defs: dg.Definitions, plates: list[str]) -> list[list[str]]:
    from mdp_assets.instance_status import latest_status

    graph = defs.resolve_asset_graph()
    keys = list(graph.toposorted_asset_keys)
    rows = []
    for plate in plates:
        for key in keys:
            if graph.get(key).partitions_def is None:
                continue
            rows.append(_summary_row(latest_status(instance, key, plate), plate, key))
    for key in keys:
        if graph.get(key).partitions_def is None:
            rows.append(_summary_row(latest_status(instance, key, None), "(all plates)", key))
    return rows


def _summary_row(status, plate: str, key: dg.AssetKey) -> list[str]:
    if status is None:
        return [plate, key.to_user_string(), "not materialized", "-", "-"]
    rows = status.value("rows")
    count = f"{rows} rows" if rows is not None else f"{status.value('files')} files"
    where = f"{status.value('tier')}: {status.value('path')}"
    return [plate, key.to_user_string(), count, _human_bytes(status.value("bytes")), where]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def run_demo(plate_count: int) -> int:
    from mdp_assets.definitions import build_definitions
    from mdp_assets.defs.jobs import CONSENSUS
    from mdp_assets.instance_status import stale_assets
    from mdp_assets.lib.demo import demo_specs, write_demo_plate
    from mdp_assets.lib.inventory import plate_fingerprint

    storage = _storage()
    instance = _instance()
    defs = build_definitions(storage)
    graph = defs.resolve_asset_graph()
    plate_keys = [k for k in graph.toposorted_asset_keys if graph.get(k).partitions_def is not None]
    plates = []
    for spec in demo_specs(plate_count):
        folder = write_demo_plate(storage.landing_path, spec)
        plates.append(spec.barcode)
        print(f"demo plate {spec.barcode}: {folder}")
    instance.add_dynamic_partitions("plates", [p for p in plates if not instance.has_dynamic_partition("plates", p)])
    plate_job = defs.resolve_job_def("plate_job")
    any_ran = False
    for plate in plates:
        fingerprint = plate_fingerprint(storage.plate_folder(plate))
        todo = stale_assets(instance, defs, plate_keys, plate, fingerprint)
        if not todo:
            print(f"{plate}: every level is materialized and unchanged; nothing to do")
            continue
        print(f"{plate}: materializing {len(todo)} level(s): {', '.join(k.to_user_string() for k in todo)}")
        result = plate_job.execute_in_process(
            instance=instance, partition_key=plate, asset_selection=todo, raise_on_error=False
        )
        if not result.success:
            print(f"{plate}: the run failed; see `make dev` (run {result.run_id})", file=sys.stderr)
            return 1
        any_ran = True
    if any_ran or stale_assets(instance, defs, [CONSENSUS], None):
        print("materializing consensus_profiles across every plate")
        result = defs.resolve_job_def("consensus_job").execute_in_process(instance=instance, raise_on_error=False)
        if not result.success:
            print(f"consensus failed; see `make dev` (run {result.run_id})", file=sys.stderr)
            return 1
    print()
    print(format_table(["plate", "level", "rows or files", "bytes", "where stored"], summary_rows(instance, defs, plates)))
    return 0


def run_summary() -> int:
    from mdp_assets.definitions import build_definitions

    instance = _instance()
    defs = build_definitions(_storage())
    plates = sorted(instance.get_dynamic_partitions("plates"))
    print(format_table(["plate", "level", "rows or files", "bytes", "where stored"], summary_rows(instance, defs, plates)))
    return 0


def run_demo_plate(barcode: str, seed: int) -> int:
    from mdp_assets.lib.demo import DemoPlateSpec, write_demo_plate

    folder = write_demo_plate(_storage().landing_path, DemoPlateSpec(barcode=barcode, seed=seed))
    print(f"demo plate {barcode} written to {folder}")
    return 0


def run_loaddata(folder: Path, output: Path, config: Path | None, path_name: str | None) -> int:
    from mdp_assets.lib.checksums import atomic_path
    from mdp_assets.lib.harmony import find_index_file, read_harmony_index
    from mdp_assets.lib.inventory import PlateFolder, inventory_plate
    from mdp_assets.lib.loaddata import loaddata_from_harmony, loaddata_from_raw_images, read_pe2loaddata_config

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
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return run_demo(args.plates)
        if args.command == "demo-plate":
            return run_demo_plate(args.barcode, args.seed)
        if args.command == "loaddata":
            return run_loaddata(args.folder, args.output, args.pe2loaddata_config, args.path_name)
        return run_summary()
    except MdpError as exc:
        print(f"mdp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
