"""Benchmark: well-level profiles (aggregate -> normalize -> feature_select) at plate scale, mdp vs pycytominer.

For each size it writes a synthetic single-cell plate (N cells x F float32 features over 384 wells, a
quarter of them DMSO negative controls, some correlated, near-constant and missing features) as Parquet,
then runs mdp's operations and, where it fits in memory, pycytominer's on the same input, each in its own
process, and prints wall seconds, peak RSS and the largest absolute difference between the two outputs.
The last line reads `speedup_200k=<pycytominer s / mdp s> max_abs_diff=<...> peak_rss_gb_800k=<...>`.

It then does the same for the single-cell level (normalize + feature_select of every cell, streamed from
Parquet to Parquet), comparing with pycytominer up to --single-cell-pycytominer-max cells; pycytominer's
pairwise-complete correlation over every cell is slow, and it holds several copies of the plate.

    .venv/bin/python bench/profiles.py [--sizes 50000 200000 800000] [--features 1000] [--pycytominer-max 200000]
                                       [--single-cell-pycytominer-max 50000] [--no-single-cell]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OPERATIONS = ["variance_threshold", "correlation_threshold", "drop_na_columns"]
NEGCON = "Metadata_treatment == 'DMSO'"
STRATA = ["Metadata_Plate", "Metadata_Well"]


def write_plate(path: Path, cells: int, features: int, seed: int = 0, chunk: int = 50_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    wells = [f"{r}{c:02d}" for r in "ABCDEFGHIJKLMNOP" for c in range(1, 25)]
    well_effect = rng.normal(scale=0.3, size=(len(wells), features)).astype(np.float32)
    names = [f"Cells_Feature_{i:04d}" for i in range(features)]
    writer = None
    for start in range(0, cells, chunk):
        n = min(chunk, cells - start)
        well_index = rng.integers(0, len(wells), n)
        values = rng.normal(size=(n, features)).astype(np.float32) + well_effect[well_index]
        values[:, 1::50] = values[:, 0::50] * 0.98 + 0.02 * values[:, 1::50]  # correlated pairs
        values[:, 2::100] = np.round(values[:, 2::100] * 1e-4, 7)  # near-constant
        values[rng.random(n) < 0.1, 3] = np.nan  # mostly present, sometimes missing
        well_names = np.array(wells)[well_index]
        columns = {"Metadata_Plate": pa.array(["BENCH"] * n), "Metadata_Well": pa.array(well_names),
                   "Metadata_treatment": pa.array(np.where(well_index % 4 == 0, "DMSO", "compound"))}
        columns.update({name: pa.array(values[:, i]) for i, name in enumerate(names)})
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=chunk)
    writer.close()


def run_mdp(source: Path, target: Path) -> None:
    from mdp_assets.science.parquet_profiles import aggregate_parquet
    from mdp_assets.science.profiles import feature_select, normalize

    wells = aggregate_parquet(source, strata=STRATA)
    normalized = normalize(wells, samples=NEGCON)
    feature_select(normalized, operations=OPERATIONS, blocklist=[]).to_parquet(target, index=False)


def run_mdp_single_cell(source: Path, target: Path) -> None:
    from mdp_assets.science.parquet_profiles import normalize_and_select_parquet
    from mdp_assets.science.profiles import ProfileParameters

    normalize_and_select_parquet(source, target, NEGCON, ProfileParameters(operations=tuple(OPERATIONS)), blocklist=[])


def read_for_pycytominer(source: Path):
    """The plate as pycytominer takes it: one pandas frame, features in float64."""
    import warnings

    import pandas as pd

    warnings.simplefilter("ignore")
    cells = pd.read_parquet(source)
    features = [c for c in cells.columns if not c.startswith("Metadata_")]
    cells[features] = cells[features].astype(np.float64)
    return cells, features


def run_pycytominer_single_cell(source: Path, target: Path) -> None:
    from pycytominer import feature_select, normalize

    cells, features = read_for_pycytominer(source)
    normalized = normalize(cells, features=features, samples=NEGCON)
    feature_select(normalized, features=features, operation=OPERATIONS).to_parquet(target, index=False)


def run_pycytominer(source: Path, target: Path) -> None:
    from pycytominer import aggregate, feature_select, normalize

    cells, features = read_for_pycytominer(source)
    wells = aggregate(cells, strata=STRATA, features=features)
    wells = wells.merge(cells[STRATA + ["Metadata_treatment"]].drop_duplicates(STRATA), on=STRATA)
    normalized = normalize(wells, features=features, samples=NEGCON)
    feature_select(normalized, features=features, operation=OPERATIONS).to_parquet(target, index=False)


ENGINES = {"mdp": run_mdp, "pycytominer": run_pycytominer, "mdp_single_cell": run_mdp_single_cell,
           "pycytominer_single_cell": run_pycytominer_single_cell}


def worker(engine: str, source: Path, target: Path) -> None:
    start = time.perf_counter()
    ENGINES[engine](source, target)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "peak_rss_gb": peak_rss_gb()}))


def peak_rss_gb() -> float:
    """This process's own peak resident memory. Not getrusage's ru_maxrss: Linux carries that across exec,
    so a worker would report the benchmark parent's peak (the plate writer's) when it is larger."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure(engine: str, source: Path, target: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--worker", engine, str(source), str(target)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def difference(a: Path, b: Path, by_row: bool = False) -> tuple[float, int]:
    """Largest |mdp - pycytominer| over the features both kept (wells matched by key, cells by position),
    and how many features only one of them kept."""
    import pyarrow.parquet as pq

    names_a, names_b = pq.read_schema(a).names, pq.read_schema(b).names
    features = [c for c in names_b if not c.startswith("Metadata_")]
    mismatched = len(set(features) ^ {c for c in names_a if not c.startswith("Metadata_")})
    shared = [f for f in features if f in set(names_a)]
    largest = 0.0
    for start in range(0, len(shared), 100):  # a batch of columns at a time: single-cell outputs are large
        names = shared[start : start + 100]
        ours, theirs = (pq.read_table(p, columns=(names if by_row else STRATA + names)).to_pandas() for p in (a, b))
        if not by_row:
            merged = ours.merge(theirs, on=STRATA, suffixes=("_mdp", "_py"))
            ours, theirs = merged[[f + "_mdp" for f in names]], merged[[f + "_py" for f in names]]
        largest = max(largest, float(np.nanmax(np.abs(ours.to_numpy() - theirs.to_numpy()))))
    return largest, mismatched


def compare(folder: Path, source: Path, size: int, label: str, ours_engine: str, theirs_engine: str,
            run_theirs: bool, note: str, why_not: str) -> dict:
    """Run mdp and (when it fits) pycytominer on one plate, print a row for each, return the figures."""
    ours = measure(ours_engine, source, folder / f"{ours_engine}_{size}.parquet")
    print(f"{size:>8} {label + 'mdp':<24} {ours.get('seconds', float('nan')):>8.1f} {ours.get('peak_rss_gb', float('nan')):>12.2f}  "
          f"{note} {ours.get('error', '')}")
    figures = {"mdp": ours}
    if not run_theirs:
        print(f"{size:>8} {label + 'pycytominer':<24} {'-':>8} {'-':>12}  not run: {why_not}")
    else:
        theirs = measure(theirs_engine, source, folder / f"{theirs_engine}_{size}.parquet")
        figures["pycytominer"] = theirs
        diff, mismatched = (float("nan"), -1)
        if "error" not in theirs and "error" not in ours:
            diff, mismatched = difference(folder / f"{ours_engine}_{size}.parquet", folder / f"{theirs_engine}_{size}.parquet",
                                          by_row=bool(label))
            figures["diff"] = diff
        print(f"{size:>8} {label + 'pycytominer':<24} {theirs.get('seconds', float('nan')):>8.1f} {theirs.get('peak_rss_gb', float('nan')):>12.2f}  "
              f"max |mdp - pycytominer| = {diff:.3g}; features selected differently: {mismatched} {theirs.get('error', '')}")
    for engine in (ours_engine, theirs_engine):
        (folder / f"{engine}_{size}.parquet").unlink(missing_ok=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000, 800_000])
    parser.add_argument("--features", type=int, default=1000)
    parser.add_argument("--pycytominer-max", type=int, default=200_000,
                        help="largest plate pycytominer is run on (it holds the plate in pandas memory)")
    parser.add_argument("--single-cell-pycytominer-max", type=int, default=50_000,
                        help="largest plate pycytominer's single-cell normalize + feature_select is run on")
    parser.add_argument("--no-single-cell", action="store_true", help="only the well level")
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "SOURCE", "TARGET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), Path(args.worker[2]))
        return
    folder = Path(tempfile.mkdtemp(prefix="mdp-bench-profiles-"))
    figures: dict[int, dict] = {}
    single_cell: dict[int, dict] = {}
    try:
        print(f"{'cells':>8} {'engine':<24} {'seconds':>8} {'peak RSS GB':>12}  note")
        for size in args.sizes:
            source = folder / f"plate_{size}.parquet"
            start = time.perf_counter()
            write_plate(source, size, args.features)
            note = f"plate written in {time.perf_counter() - start:.0f} s ({source.stat().st_size / 1e9:.1f} GB)"
            figures[size] = compare(folder, source, size, "", "mdp", "pycytominer", size <= args.pycytominer_max, note,
                                    "it holds the whole plate in pandas memory")
            if not args.no_single_cell:
                single_cell[size] = compare(folder, source, size, "single-cell ", "mdp_single_cell", "pycytominer_single_cell",
                                            size <= args.single_cell_pycytominer_max, "normalize + feature_select of every cell",
                                            "above --single-cell-pycytominer-max (its pairwise correlation over every cell is slow)")
            source.unlink()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if single_cell:
        rss = single_cell.get(800_000, {}).get("mdp", {}).get("peak_rss_gb", float("nan"))
        diffs = [f["diff"] for f in single_cell.values() if "diff" in f]
        print(f"single_cell: max_abs_diff={max(diffs) if diffs else float('nan'):.3g} peak_rss_gb_800k={rss:.2f}")
    at_200k = figures.get(200_000, {})
    speedup = at_200k.get("pycytominer", {}).get("seconds", float("nan")) / at_200k.get("mdp", {}).get("seconds", float("nan")) if at_200k else float("nan")
    diffs = [f["diff"] for f in figures.values() if "diff" in f]
    rss_800k = figures.get(800_000, {}).get("mdp", {}).get("peak_rss_gb", float("nan"))
    print(f"speedup_200k={speedup:.2f} max_abs_diff={max(diffs) if diffs else float('nan'):.3g} peak_rss_gb_800k={rss_800k:.2f}")


if __name__ == "__main__":
    main()
