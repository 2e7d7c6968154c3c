"""Benchmark: peak RSS of each single-cell level for N cells, to show memory follows a batch, not the plate.

Writes a synthetic plate of N cells (tools/synthetic_single_cells.py: sites of 1,024 cells, CellProfiler-style
object tables of F features per compartment), then runs each level in its own process, as the assets do:
single_cell_features (the object tables streamed into the single-cell table), single_cell_qc, single_cell_crops,
single_cell_profiles, well_profiles, and, for comparison, the whole table read into pandas (the old way).
Prints one line per level (wall seconds, peak RSS) and a last line for bench/plate_scale.py:
`single_cell_memory cells=<N> table_gb=<x> peak_rss_gb=<largest level> whole_table_rss_gb=<x>`.

    .venv/bin/python bench/single_cell_memory.py 200000 [--features 300] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.synthetic_single_cells import LEVELS, SyntheticPlate, write_plate  # noqa: E402

GRID = 32  # 1,024 cells a site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", type=int)
    parser.add_argument("--features", type=int, default=300, help="features per compartment (three compartments)")
    parser.add_argument("--memory-gb", type=float, default=0.25, help="the profile steps' memory budget")
    parser.add_argument("--keep", type=Path, help="write the plate here and keep it")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="single-cell-memory-"))
    plate = SyntheticPlate(folder / "plate", sites=max(1, -(-args.cells // (GRID * GRID))), grid=GRID,
                           features=args.features)
    try:
        write_plate(plate)
        columns = sum(len(pq.read_schema(plate.tables / f"{n}.parquet")) for n in ("Cells", "Cytoplasm", "Nuclei"))
        table_gb = plate.cells * columns * 8 / 2**30
        print(f"{plate.cells} cells, {3 * args.features} features: the table is {table_gb:.2f} GB in float64")
        peaks = {}
        for level in LEVELS:
            done = subprocess.run([sys.executable, "-m", "tools.synthetic_single_cells", str(plate.root), level,
                                   "--memory-bytes", str(int(args.memory_gb * 2**30))],
                                  capture_output=True, text=True, cwd=ROOT)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if not lines:
                raise SystemExit(f"{level} failed: {done.stderr[-2000:]}")
            result = json.loads(lines[-1])
            peaks[level] = result["peak_rss_mb"] / 1024
            print(f"{level:24s} {result['seconds']:8.1f} s  peak RSS {peaks[level]:.2f} GB")
        whole = peaks.pop("whole_table_in_pandas")
        print(f"single_cell_memory cells={plate.cells} table_gb={table_gb:.2f} peak_rss_gb={max(peaks.values()):.2f} "
              f"whole_table_rss_gb={whole:.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
