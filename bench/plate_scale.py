"""Benchmark: a plate's levels at plate scale, and what a real 384-well plate needs.

It writes synthetic Cell Painting plates (plates/demo.py: 5 uint16 channels of 1080x1080 per site, uncompressed
as instruments write them; a pool of distinct fields per treatment reused across wells so a plate is written in
seconds) of each --wells size, registers each, and makes every level of plate_job with the built-in engine, one
level after another in one child process (each a Dagster run over the stored inputs, as the daemon runs it):
- seconds of the level's step (Dagster's step start to success) and CPU seconds of its processes;
- peak RSS: the largest high-water mark (VmHWM) of any process of the level (the step's process, its
  high-water mark reset before the level, and its site workers, sampled from /proc), and the peak of their sum;
- bytes written: what the catalog lists for the level's stored partition, and that per raw byte.
It then fits time and memory against wells (log-log least squares) per level, projects a 384-well x 9-site
plate on this machine and per 100 cores (straight-line fits, fixed + per-site, of step seconds and of CPU
seconds in sites; core-seconds / 100, the per-plate steps that do not split by site counted whole); memory at
384 wells from the log-log fit in sites, and does the same for the profile operations (aggregate, normalize,
feature_select; bench/profiles.py's code) over synthetic single-cell tables projected to 1,000,000 cells x
3,000 features. With --cellprofiler-sites N and a built CellProfiler environment, the CellProfiler engine runs
illumination and analysis over an N-site plate, and its seconds per site are projected to the plate.

    .venv/bin/python bench/plate_scale.py [--wells 24 96 384] [--sites 9] [--workers 0] [--quick]
                                          [--cellprofiler-sites 0] [--keep DIR]

--quick: 24, 48 and 96 wells of 1 site, profiles from 20,000 and 40,000 cells x 300 features (minutes on two
cores); figures at 384 wells and 1M cells x 3,000 features are then projections from the fit. The last line
reads `plate_scale peak_rss_gb_384=<x> rss_growth_96_384=<x> time_exponent=<x> bytes_per_raw_byte=<x>`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPOSITORY = BENCH.parent
LEVELS = ["raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks",
          "single_cell_features", "single_cell_qc", "single_cell_crops", "single_cell_profiles", "well_profiles",
          "profile_quality", "single_cell_embeddings", "well_embeddings"]
# Levels whose work splits by site (parallel processes here, groups on a cluster); the rest run once per plate.
PER_SITE = {"raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks",
            "single_cell_features", "single_cell_crops"}
ROWS = "ABCDEFGHIJKLMNOP"
REAL_WELLS, REAL_SITES = 384, 9
TARGET_RSS_GB, TARGET_GROWTH, TARGET_EXPONENT = 4.0, 0.10, 1.1
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


# -- the plates -------------------------------------------------------------------------------------------
def layout(wells: int) -> tuple[str, tuple[int, ...]]:
    """Rows and columns of a plate with `wells` wells, as square as the 16 x 24 grid allows."""
    rows = min(16, max(1, round(math.sqrt(wells * 2 / 3))))
    while wells % rows:
        rows -= 1
    columns = wells // rows
    if columns > 24:
        raise SystemExit(f"{wells} wells do not fit a 384-well plate's 16 x 24 grid")
    return ROWS[:rows], tuple(range(1, columns + 1))


def write_deployment(root: Path, workers: int, engine: str = "builtin") -> Path:
    import yaml

    config = {"data_root": "data", "dagster_home": "dagster_home",
              "engine": {"kind": engine, "cellprofiler": {"environment": str(REPOSITORY / ".mdp" / "cellprofiler")}},
              "execution": {"executor": "in_process"}, "compute": {"workers": workers}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "dagster_home").mkdir(exist_ok=True)
    path = root / "mdp.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def make_plate(config: Path, barcode: str, wells: int, sites: int, size: int, cells: int) -> int:
    """Write and register one plate; its raw bytes."""
    from mdp_assets.config import load_deployment
    from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
    from mdp_assets.services.registration import register_plate
    from mdp_assets.storage.resource import MdpStorage

    storage = MdpStorage.from_deployment(load_deployment(config))
    rows, columns = layout(wells)
    spec = DemoPlateSpec(barcode=barcode, rows=rows, columns=columns, sites_per_well=sites, image_size=size,
                         cells_per_site=cells, site_pool=3, compression=None)
    folder = write_demo_plate(storage.landing_path, spec)
    register_plate(storage, barcode)
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix == ".tiff")


# -- a plate's levels in a child process ------------------------------------------------------------------
def child_levels(config: Path, barcode: str, levels: list[str], marker: Path) -> None:
    """Make each level of one plate in turn (a Dagster run of plate_job over that level, as the daemon runs
    it); append each level's figures as a JSON line to `marker` with the suffix .jsonl. Before each level this process's peak RSS is reset to its
    current RSS (/proc/self/clear_refs), so a level's figure is its own (plus what earlier levels left
    allocated: an upper bound); `marker` names the level running, for the parent's sampling of the workers."""
    import dagster as dg

    from mdp_assets.config import load_deployment
    from mdp_assets.definitions import build_definitions
    from mdp_assets.storage import catalog
    from mdp_assets.storage.resource import MdpStorage

    deployment = load_deployment(config)
    os.environ["DAGSTER_HOME"] = str(deployment.dagster_home)
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions("plates", [barcode])
    job = build_definitions(deployment).resolve_job_def("plate_job")
    storage = MdpStorage.from_deployment(deployment)
    for level in levels:
        Path("/proc/self/clear_refs").write_text("5")
        marker.write_text(level)
        result = job.execute_in_process(instance=instance, partition_key=barcode,
                                        asset_selection=[dg.AssetKey(level)], raise_on_error=True)
        times = {e.dagster_event.event_type_value: e.timestamp for e in instance.all_logs(result.run_id)
                 if e.is_dagster_event and e.dagster_event.step_key == level}
        marker.write_text("")
        _, rows = catalog.query(storage.catalog_path, f"SELECT coalesce(sum(bytes), 0) FROM stored_files "
                                f"WHERE asset_key = '{level}' AND partition = '{barcode}'")
        with marker.with_suffix(".jsonl").open("a") as out:
            out.write(json.dumps({"level": level, "step_s": times["STEP_SUCCESS"] - times["STEP_START"],
                                  "bytes": int(rows[0][0]), "self_hwm_kb": _status_kb(os.getpid(), "VmHWM")}) + "\n")


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found.extend(frontier)
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def run_levels(config: Path, barcode: str, levels: list[str], on_level=None) -> dict[str, dict]:
    """Every level of one plate in one child process, its process tree sampled; the figures per level."""
    marker, log = config.parent / "level.txt", config.parent / "levels.log"
    marker.write_text("")
    marker.with_suffix(".jsonl").write_text("")
    with log.open("w") as err:
        child = subprocess.Popen([sys.executable, __file__, "--child-levels", str(config), barcode, str(marker),
                                  *levels], stdout=err, stderr=err, start_new_session=True)
    figures: dict[str, dict] = {}
    workers_kb: dict[str, int] = {}
    tree_kb: dict[str, int] = {}
    cpu_seen: dict[int, float] = {}
    cpu_at_start: dict[str, float] = {}
    reported = 0
    while True:
        running = child.poll() is None
        level = marker.read_text().strip()
        pids = _descendants(child.pid)
        if level:
            for pid in pids:
                cpu_seen[pid] = max(cpu_seen.get(pid, 0.0), _cpu_s(pid))
            cpu_at_start.setdefault(level, sum(cpu_seen.values()))
            others = [pid for pid in pids if pid != child.pid]
            workers_kb[level] = max([workers_kb.get(level, 0), *(_status_kb(p, "VmHWM") for p in others)])
            tree_kb[level] = max(tree_kb.get(level, 0), sum(_status_kb(p, "VmRSS") for p in pids))
        lines = [line for line in marker.with_suffix(".jsonl").read_text().splitlines() if line.endswith("}")]
        for line in lines[reported:]:
            reported += 1
            if line:
                done = json.loads(line)
                name = done["level"]
                for pid in pids:
                    cpu_seen[pid] = max(cpu_seen.get(pid, 0.0), _cpu_s(pid))
                peak_kb = max(done["self_hwm_kb"], workers_kb.get(name, 0))
                figures[name] = {"step_s": done["step_s"], "bytes": done["bytes"], "peak_rss_gb": peak_kb / 1024**2,
                                 "tree_peak_rss_gb": max(tree_kb.get(name, 0), peak_kb) / 1024**2,
                                 "cpu_s": sum(cpu_seen.values()) - cpu_at_start.get(name, 0.0)}
                if on_level:
                    on_level(name, figures[name])
        if not running:
            break
        time.sleep(0.2)
    if child.returncode != 0:
        raise SystemExit(f"the levels of {barcode} failed:\n{log.read_text()[-4000:]}")
    return figures


# -- fits and projections ------------------------------------------------------------------------------------
def exponent(xs: list[float], ys: list[float]) -> float:
    """The slope of log y against log x (least squares); nan with fewer than two sizes."""
    points = [(math.log(x), math.log(max(y, 1e-9))) for x, y in zip(xs, ys)]
    if len({x for x, _ in points}) < 2:
        return float("nan")
    slope, _ = np.polyfit([x for x, _ in points], [y for _, y in points], 1)
    return float(slope)


def project_power(xs: list[float], ys: list[float], at: float) -> float:
    """y at `at` from the log-log fit (memory: a level whose memory follows the plate has an exponent near 1,
    one bounded by a batch near 0; a straight line through noisy small points would explode either)."""
    b = exponent(xs, ys)
    return ys[-1] if math.isnan(b) else ys[-1] * (at / xs[-1]) ** b


def project(xs: list[float], ys: list[float], at: float) -> float:
    """y at `at` from a straight-line fit y = fixed + slope x of the measured points (slope >= 0): the fixed
    part (process start, a fork server, Dagster's run) does not shrink the projection the way a log-log fit
    through small plates would; one point: proportional."""
    if len(set(xs)) < 2:
        return ys[-1] * at / xs[-1]
    slope, fixed = np.polyfit(xs, ys, 1)
    if slope < 0:
        return float(np.mean(ys))
    return float(fixed + slope * at)


def profile_bench(sizes: list[int], features: int, work: Path) -> list[dict]:
    """aggregate -> normalize -> feature_select of synthetic single-cell tables, each in a child process."""
    results = []
    for cells in sizes:
        source = work / f"cells_{cells}.parquet"
        subprocess.run([sys.executable, __file__, "--child-write-cells", str(source), str(cells), str(features)],
                       check=True)
        target = work / f"wells_{cells}.parquet"
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, __file__, "--child-profiles", str(source), str(target)],
                                 stdout=subprocess.PIPE, text=True)
        peak = 0
        while child.poll() is None:
            peak = max(peak, max(_status_kb(pid, "VmHWM") for pid in _descendants(child.pid)))
            time.sleep(0.2)
        out, _ = child.communicate()
        if child.returncode != 0:
            raise SystemExit("profiles benchmark failed")
        peak = max(peak, json.loads(out.strip().splitlines()[-1])["self_maxrss_kb"])
        results.append({"cells": cells, "features": features, "wall_s": time.monotonic() - started,
                        "peak_rss_gb": peak / 1024**2, "input_bytes": source.stat().st_size})
        source.unlink()
    return results


def child_profiles(source: Path, target: Path) -> None:
    import resource

    sys.path.insert(0, str(BENCH))
    from profiles import run_mdp  # bench/profiles.py: aggregate_parquet, normalize, feature_select

    run_mdp(source, target)
    print(json.dumps({"self_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def child_write_cells(target: Path, cells: int, features: int) -> None:
    sys.path.insert(0, str(BENCH))
    from profiles import write_plate  # written in row groups, never whole in memory

    write_plate(target, cells, features, chunk=min(50_000, cells))


def cellprofiler_sample(work: Path, sites: int, size: int, cells: int) -> dict | None:
    """CellProfiler's illumination and analysis over a small plate: seconds per site."""
    from mdp_assets.config import load_deployment, resolved_engine

    config = write_deployment(work / "cellprofiler", workers=0, engine="cellprofiler")
    deployment = load_deployment(config)
    if resolved_engine(deployment.config) != "cellprofiler":
        return None
    env = Path(deployment.config.engine.cellprofiler.environment)
    if not (env / "bin" / "python").exists():
        return None
    wells = max(1, sites)
    make_plate(config, "BENCH-CP", wells, 1, size, cells)
    figures = run_levels(config, "BENCH-CP", LEVELS[:LEVELS.index("single_cell_features") + 1])
    engine_s = sum(figures[level]["step_s"] for level in ("illumination_functions", "corrected_images",
                                                           "segmentation_masks", "single_cell_features"))
    return {"sites": wells, "engine_s": engine_s, "s_per_site": engine_s / wells,
            "peak_rss_gb": max(f["peak_rss_gb"] for f in figures.values())}


# -- the report ----------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wells", type=int, nargs="+")
    parser.add_argument("--sites", type=int)
    parser.add_argument("--size", type=int, default=1080, help="image edge in pixels")
    parser.add_argument("--cells-per-site", type=int, default=290,
                        help="cells per field (290 x 3,456 sites is about a million cells per plate)")
    parser.add_argument("--workers", type=int, default=0, help="compute.workers: processes per step (0: cores)")
    parser.add_argument("--profile-cells", type=int, nargs="+")
    parser.add_argument("--profile-features", type=int)
    parser.add_argument("--cellprofiler-sites", type=int, default=0, help="CellProfiler over a plate of N sites")
    parser.add_argument("--quick", action="store_true", help="24/48/96 wells of 1 site; small profile tables")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--levels", nargs="+", choices=LEVELS, help="only these levels (and no others)")
    parser.add_argument("--report-from", type=Path, help="a measured.json of an earlier run (--keep): fit and "
                        "project its plates without measuring again")
    args = parser.parse_args(argv)
    levels = [level for level in LEVELS if not args.levels or level in args.levels]
    wells_list = args.wells or ([24, 48, 96] if args.quick else [24, 96, 384])
    sites = args.sites or (1 if args.quick else REAL_SITES)
    profile_cells = args.profile_cells or ([20_000, 40_000] if args.quick else [250_000, 1_000_000])
    profile_features = args.profile_features or (300 if args.quick else 3_000)
    work = args.keep or Path(tempfile.mkdtemp(prefix="plate_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    from mdp_assets.parallel import resolve_workers

    cores = resolve_workers(args.workers)
    measured: dict[int, dict[str, dict]] = {}
    raw_bytes: dict[int, int] = {}
    if args.report_from:
        earlier = json.loads(args.report_from.read_text())
        measured = {int(w): m for w, m in earlier["measured"].items()}
        raw_bytes = {int(w): b for w, b in earlier["raw_bytes"].items()}
        wells_list = sorted(measured)
        levels = [level for level in levels if all(level in m for m in measured.values())]
        print(f"reporting the plates measured in {args.report_from}: {wells_list} wells")
    print(f"plate_scale: {wells_list} wells x {sites} site(s) x 5 channels of {args.size}x{args.size} uint16, "
          f"{args.cells_per_site} cells per site, built-in engine, {cores} worker process(es) per step, "
          f"{os.cpu_count()} cores on this machine; work in {work}")
    for wells in [] if args.report_from else wells_list:
        barcode = f"BENCH-{wells:03d}W{sites}S"
        config = write_deployment(work / barcode, args.workers)
        started = time.monotonic()
        raw_bytes[wells] = make_plate(config, barcode, wells, sites, args.size, args.cells_per_site)
        print(f"\n{barcode}: {wells * sites} sites, {raw_bytes[wells] / 1e9:.2f} GB raw, written and registered "
              f"in {time.monotonic() - started:.0f} s")
        print(f"  {'level':24s} {'step s':>8s} {'cpu s':>8s} {'peak RSS GB':>11s} {'tree GB':>8s} "
              f"{'bytes':>12s} {'per raw B':>9s}")
        def show(level: str, figures: dict, raw: int = raw_bytes[wells]) -> None:
            print(f"  {level:24s} {figures['step_s']:8.1f} {figures['cpu_s']:8.1f} {figures['peak_rss_gb']:11.3f} "
                  f"{figures['tree_peak_rss_gb']:8.3f} {figures['bytes']:12,d} {figures['bytes'] / raw:9.3f}", flush=True)

        measured[wells] = run_levels(config, barcode, levels, show)
        total = sum(f["step_s"] for f in measured[wells].values())
        (work / "measured.json").write_text(json.dumps({"raw_bytes": raw_bytes, "measured": measured}))
        print(f"  {'all levels':24s} {total:8.1f} s; {total / (wells * sites):.2f} s per site")
        if not args.keep:
            shutil.rmtree(work / barcode, ignore_errors=True)

    # Growth in wells, per level and in all.
    xs = [float(w) for w in wells_list]
    sites_real = REAL_WELLS * REAL_SITES
    print(f"\ngrowth in wells (log-log fit over {wells_list}) and a {REAL_WELLS}-well x {REAL_SITES}-site plate "
          f"({sites_real} sites) projected from it:")
    print(f"  {'level':24s} {'time exp':>8s} {'RSS exp':>8s} {'RSS GB@384':>10s} {'growth 96->384':>14s} "
          f"{'h here':>7s} {'core-h':>7s} {'per raw B':>9s}")
    peak_384, growths, core_s_real, here_s_real, bytes_ratio = 0.0, [], 0.0, 0.0, []
    measured_sites = [w * sites for w in wells_list]
    for level in levels:
        times = [measured[w][level]["step_s"] for w in wells_list]
        rss = [measured[w][level]["peak_rss_gb"] for w in wells_list]
        cpu = [measured[w][level]["cpu_s"] for w in wells_list]
        t_exp, m_exp = exponent(xs, times), exponent(xs, rss)
        # Memory is projected in sites (a whole-plate table grows with sites, not wells).
        fit_sites = [float(s) for s in measured_sites]
        rss_384 = project_power(fit_sites, rss, sites_real) if max(measured_sites) < sites_real else rss[-1]
        rss_96 = project_power(fit_sites, rss, 96 * REAL_SITES)
        growth = rss_384 / rss_96 - 1
        here = project([float(s) for s in measured_sites], times, sites_real)
        core = project([float(s) for s in measured_sites], cpu, sites_real)
        ratio = measured[wells_list[-1]][level]["bytes"] / raw_bytes[wells_list[-1]]
        peak_384, here_s_real, core_s_real = max(peak_384, rss_384), here_s_real + here, core_s_real + core
        growths.append(growth)
        bytes_ratio.append(ratio)
        print(f"  {level:24s} {t_exp:8.2f} {m_exp:8.2f} {rss_384:10.3f} {growth:14.1%} {here / 3600:7.2f} "
              f"{core / 3600:7.2f} {ratio:9.3f}")
    totals = [sum(measured[w][level]["step_s"] for level in levels) for w in wells_list]
    time_exponent = exponent(xs, totals)
    per_site = {level: project([float(s) for s in measured_sites],
                               [measured[w][level]["step_s"] for w in wells_list], sites_real) for level in levels}
    serial_s = sum(s for level, s in per_site.items() if level not in PER_SITE)
    split_core_s = core_s_real - sum(project([float(s) for s in measured_sites],
                                             [measured[w][level]["cpu_s"] for w in wells_list], sites_real)
                                     for level in levels if level not in PER_SITE)
    cluster_s = split_core_s / 100 + serial_s
    growth_max = max(growths)
    bytes_total = sum(bytes_ratio)
    print(f"\n  all levels: time exponent {time_exponent:.2f} in wells (target <= {TARGET_EXPONENT}); "
          f"{REAL_WELLS}-well plate here {here_s_real / 3600:.1f} h with {cores} process(es) per step, "
          f"{core_s_real / 3600:.1f} core-hours; on 100 cores about {cluster_s / 3600:.2f} h (site levels' "
          f"core-seconds / 100, plus {serial_s / 60:.0f} min of per-plate levels run whole)")
    print(f"  peak RSS at {REAL_WELLS} wells, largest level: {peak_384:.2f} GB (target < {TARGET_RSS_GB}); "
          f"largest growth 96 -> 384 wells: {growth_max:.1%} (target < {TARGET_GROWTH:.0%}); "
          f"bytes written per raw byte, all levels: {bytes_total:.2f}")
    if max(wells_list) < REAL_WELLS or sites < REAL_SITES:
        print(f"  (projected: measured up to {max(wells_list)} wells x {sites} site(s); the fit extrapolates)")

    print(f"\nprofiles (aggregate, normalize, feature_select) from {profile_cells} cells x {profile_features} "
          "features, each in a child process:")
    profile_results = profile_bench(profile_cells, profile_features, work)
    for r in profile_results:
        print(f"  {r['cells']:>9,d} cells: {r['wall_s']:7.1f} s, peak RSS {r['peak_rss_gb']:.3f} GB, "
              f"input {r['input_bytes'] / 1e9:.2f} GB")
    values = [r["cells"] * r["features"] for r in profile_results]
    real_values = 1_000_000 * 3_000
    p_time = project([float(v) for v in values], [r["wall_s"] for r in profile_results], real_values)
    p_rss = project_power([float(v) for v in values], [r["peak_rss_gb"] for r in profile_results], real_values)
    print(f"  time exponent {exponent([float(v) for v in values], [r['wall_s'] for r in profile_results]):.2f}, "
          f"RSS exponent {exponent([float(v) for v in values], [r['peak_rss_gb'] for r in profile_results]):.2f} "
          f"in cells x features; 1,000,000 x 3,000 projected: {p_time / 60:.1f} min, peak RSS {p_rss:.2f} GB")

    if args.cellprofiler_sites:
        sample = cellprofiler_sample(work, args.cellprofiler_sites, args.size, args.cells_per_site)
        if sample is None:
            print("\nCellProfiler: no environment (make cellprofiler); not measured")
        else:
            plate_core_h = sample["s_per_site"] * sites_real / 3600
            print(f"\nCellProfiler over {sample['sites']} sites: {sample['s_per_site']:.1f} s per site of engine "
                  f"steps; a {REAL_WELLS}-well plate {plate_core_h:.1f} h at this rate here, "
                  f"{plate_core_h * cores / 100:.2f} h on 100 cores; peak RSS {sample['peak_rss_gb']:.2f} GB")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"plate_scale peak_rss_gb_384={peak_384:.3f} rss_growth_96_384={growth_max:.3f} "
          f"time_exponent={time_exponent:.3f} bytes_per_raw_byte={bytes_total:.3f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-levels":
        child_levels(Path(sys.argv[2]), sys.argv[3], sys.argv[5:], Path(sys.argv[4]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-profiles":
        child_profiles(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child-write-cells":
        child_write_cells(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(main())
