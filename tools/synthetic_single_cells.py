"""A synthetic plate at the single-cell levels, as large as asked, written in bounded memory: what the memory
test (`mdp_assets_tests/test_bounded_memory.py`) and `bench/single_cell_memory.py` run the levels on.

Each site is a grid of square cells (a nucleus in the middle of each) in two uint16 channels, with its masks
(`Nuclei`, `Cells`) and the object tables a CellProfiler run leaves in a segmentation_masks partition
(`cellprofiler/Image.parquet`, `Cells`, `Cytoplasm`, `Nuclei`, related by their parent columns, sorted by
ImageNumber, in one large row group as `run_analysis` writes them). Feature values are drawn from a few
hundred levels, so the files stay small on disk while the table in memory is `cells x features x 8` bytes.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import tifffile

from mdp_assets.science.image_store import write_stack

CHANNELS = ("DNA", "ER")
SPACING = 16  # pixels between cell centres; a cell is 12 x 12, its nucleus 6 x 6
QC_FEATURES = ("AreaShape_Area", "AreaShape_FormFactor", "AreaShape_Eccentricity")


@dataclass(frozen=True)
class SyntheticPlate:
    root: Path
    sites: int
    grid: int  # cells per site = grid * grid
    features: int  # per compartment
    sites_per_well: int = 4
    plate: str = "SYN-0001"

    @property
    def cells(self) -> int:
        return self.sites * self.grid * self.grid

    @property
    def tables(self) -> Path:
        return self.root / "masks" / "cellprofiler"

    @property
    def masks_dir(self) -> Path:
        return self.root / "masks"

    def site_keys(self) -> list[tuple[str, int]]:
        keys = []
        for index in range(self.sites):
            well = index // self.sites_per_well
            keys.append((f"{'ABCDEFGHIJKLMNOP'[well // 24 % 16]}{well % 24 + 1:02d}", index % self.sites_per_well + 1))
        return keys

    def wells(self) -> pd.DataFrame:
        names = sorted({w for w, _ in self.site_keys()})
        return pd.DataFrame({"Metadata_Plate": self.plate, "Metadata_Well": names,
                             "Metadata_treatment": ["DMSO" if i % 4 == 0 else f"compound_{i % 7}" for i in range(len(names))]})

    def acquisition(self) -> pd.DataFrame:
        keys = self.site_keys()
        return pd.DataFrame({"Metadata_Well": [w for w, _ in keys], "Metadata_Site": [s for _, s in keys],
                             "Metadata_Objective": "20x"})

    def feature_names(self, compartment: str) -> list[str]:
        fixed = [f"{compartment}_{name}" for name in QC_FEATURES]
        fixed += [f"{compartment}_AreaShape_Center_X", f"{compartment}_AreaShape_Center_Y"]
        return fixed + [f"{compartment}_Texture_Synthetic_{i:04d}" for i in range(self.features - len(fixed))]


def _site_labels(grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    size = grid * SPACING
    nuclei = np.zeros((size, size), np.int32)
    cells = np.zeros((size, size), np.int32)
    centres = np.zeros((grid * grid, 2))
    for number in range(1, grid * grid + 1):
        row, col = divmod(number - 1, grid)
        y, x = row * SPACING + SPACING // 2, col * SPACING + SPACING // 2
        cells[y - 6 : y + 6, x - 6 : x + 6] = number
        nuclei[y - 3 : y + 3, x - 3 : x + 3] = number
        centres[number - 1] = (x - 0.5, y - 0.5)  # the centroid of the square's pixels
    return nuclei, cells, centres


def _object_table(rng: np.random.Generator, names: list[str], ids: dict[str, np.ndarray],
                  centres: np.ndarray) -> pa.Table:
    columns = dict(ids)
    for name in names:
        if name.endswith("Center_X"):
            columns[name] = centres[:, 0]
        elif name.endswith("Center_Y"):
            columns[name] = centres[:, 1]
        else:  # a few hundred levels: small on disk (dictionary encoding), 8 bytes a value in memory
            columns[name] = rng.integers(0, 400, len(centres)).astype(np.float64) / 4
    return pa.table(columns)


def write_plate(plate: SyntheticPlate, seed: int = 0) -> dict[str, object]:
    """Write the plate under `plate.root`; returns what the levels need: masks and corrected site indexes,
    raw image paths by site."""
    rng = np.random.default_rng(seed)
    plate.tables.mkdir(parents=True, exist_ok=True)
    raw_dir = plate.root / "raw"
    raw_dir.mkdir(exist_ok=True)
    nuclei, cells, centres = _site_labels(plate.grid)
    per_site = plate.grid * plate.grid
    masks_rows, raw_paths, images = [], {}, []
    for index, (well, site) in enumerate(plate.site_keys(), start=1):
        masks_name = f"{well}_s{site:02d}_masks.tiff"
        write_stack(plate.masks_dir / masks_name, np.stack([nuclei, cells]), ["Nuclei", "Cells"], None)
        paths = {}
        for channel_index, channel in enumerate(CHANNELS):
            labels = nuclei if channel == "DNA" else cells
            plane = ((labels > 0) * (1000 * (channel_index + 1) + (labels % 97) * 10)).astype(np.uint16)
            paths[channel] = raw_dir / f"{well}_s{site:02d}_{channel}.tiff"
            tifffile.imwrite(paths[channel], plane, compression="zlib")
        raw_paths[(well, site)] = paths
        masks_rows.append({"Metadata_Well": well, "Metadata_Site": site, "file_name": masks_name,
                           "corrected_file_name": f"{well}_s{site:02d}.ome.tiff",
                           "Count_Nuclei": per_site, "Count_Cells": per_site})
        images.append({"ImageNumber": index, "Image_Count_Cells": per_site, "Image_Count_Nuclei": per_site,
                       "Image_FileName_DNA": paths["DNA"].name, "Metadata_Well": well, "Metadata_Site": site,
                       "Metadata_Plate": plate.plate})
    numbers = np.tile(np.arange(1, per_site + 1, dtype=np.int64), plate.sites)
    ids = {"ImageNumber": np.repeat(np.arange(1, plate.sites + 1, dtype=np.int64), per_site), "ObjectNumber": numbers}
    all_centres = np.tile(centres, (plate.sites, 1))
    parents = {"Nuclei": {}, "Cells": {"Cells_Parent_Nuclei": numbers},
               "Cytoplasm": {"Cytoplasm_Parent_Cells": numbers, "Cytoplasm_Parent_Nuclei": numbers}}
    for name, extra in parents.items():
        table = _object_table(rng, plate.feature_names(name), {**ids, **extra}, all_centres)
        # One row group up to a million rows, as pandas' to_parquet writes a plate's object table.
        pq.write_table(table, plate.tables / f"{name}.parquet", row_group_size=1 << 20)
        del table
    pd.DataFrame(images).to_parquet(plate.tables / "Image.parquet", index=False)
    masks = pd.DataFrame(masks_rows)
    masks.to_parquet(plate.masks_dir / "sites.parquet", index=False)
    save(plate)
    return {"masks": masks, "raw_paths": raw_paths}


# -- the single-cell levels over a written plate, one level per process (`python -m tools.synthetic_single_cells`)


def _level_features(plate: SyntheticPlate, out: Path, memory: int) -> dict:
    from mdp_assets.engines.cellprofiler.run import cellprofiler_features
    from mdp_assets.science.features import write_single_cells

    (out / "features").mkdir(parents=True, exist_ok=True)
    return write_single_cells(cellprofiler_features(plate.tables), plate.wells(), plate.acquisition(),
                              out / "features" / "table.parquet")


def _level_cell_qc(plate: SyntheticPlate, out: Path, memory: int) -> dict:
    from mdp_assets.science.cell_qc import DEFAULT_CONDITIONS, write_cell_qc

    return write_cell_qc(out / "features" / "table.parquet", DEFAULT_CONDITIONS, out / "cell_qc.parquet")


def _level_crops(plate: SyntheticPlate, out: Path, memory: int) -> dict:
    from mdp_assets.science.cell_qc import outlier_flags
    from mdp_assets.science.crops import site_images_reader, write_crop_store

    masks = pd.read_parquet(plate.masks_dir / "sites.parquet")
    corrected = masks[["Metadata_Well", "Metadata_Site"]].assign(file_name=None)
    raw = {(w, s): {c: plate.root / "raw" / f"{w}_s{s:02d}_{c}.tiff" for c in CHANNELS} for w, s in plate.site_keys()}
    (out / "crops").mkdir(parents=True, exist_ok=True)
    store = write_crop_store(out / "features" / "table.parquet", masks, plate.masks_dir,
                             site_images_reader(masks, plate.root, corrected, raw), list(CHANNELS), out / "crops",
                             16, np.uint16, None, outlier_flags(out / "cell_qc.parquet"))
    return {"cells": store.cells, "flagged_examples": store.flagged, "kept_examples": store.kept}


# correlation_threshold is left out: its memory is features squared, not cells, and its time would dominate.
PROFILE_PARAMETERS_OPERATIONS = ("variance_threshold", "drop_na_columns", "blocklist")


def _parameters():
    from mdp_assets.science.profiles import ProfileParameters

    return ProfileParameters(operations=PROFILE_PARAMETERS_OPERATIONS)


def _level_single_cell_profiles(plate: SyntheticPlate, out: Path, memory: int) -> dict:
    from mdp_assets.science.cell_qc import cells_for_profiles
    from mdp_assets.science.parquet_profiles import normalize_and_select_parquet

    with cells_for_profiles(out / "features" / "table.parquet", out / "cell_qc.parquet", True, out / "work") as (
            cells, left_out):
        summary = normalize_and_select_parquet(cells, out / "single_cell_profiles.parquet",
                                               "Metadata_treatment == 'DMSO'", _parameters(), memory_budget=memory)
    return {**summary, "left_out": left_out, "rows": pq.ParquetFile(out / "single_cell_profiles.parquet").metadata.num_rows}


def _level_well_profiles(plate: SyntheticPlate, out: Path, memory: int) -> dict:
    from mdp_assets.science.cell_qc import cells_for_profiles
    from mdp_assets.science.parquet_profiles import aggregate_parquet
    from mdp_assets.science.profiles import normalize_and_select

    with cells_for_profiles(out / "features" / "table.parquet", out / "cell_qc.parquet", True, out / "work") as (
            cells, left_out):
        wells = aggregate_parquet(cells, memory_budget=memory)
    wells.to_parquet(out / "well_aggregates.parquet", index=False)
    table, summary = normalize_and_select(wells, "Metadata_treatment == 'DMSO'", _parameters())
    table.to_parquet(out / "well_profiles.parquet", index=False)
    return {**summary, "wells": len(table)}


def _level_whole_table(plate: SyntheticPlate, out: Path, memory: int) -> dict:
    """The way it was done before: the plate's whole single-cell table in pandas."""
    table = pd.read_parquet(out / "features" / "table.parquet")
    return {"rows": len(table)}


LEVELS = {"single_cell_features": _level_features, "single_cell_qc": _level_cell_qc,
          "single_cell_crops": _level_crops, "single_cell_profiles": _level_single_cell_profiles,
          "well_profiles": _level_well_profiles, "whole_table_in_pandas": _level_whole_table}


def save(plate: SyntheticPlate) -> None:
    (plate.root / "plate.json").write_text(json.dumps({"sites": plate.sites, "grid": plate.grid,
                                                       "features": plate.features}))


def load(root: Path) -> SyntheticPlate:
    return SyntheticPlate(root, **json.loads((root / "plate.json").read_text()))


def main(argv: list[str] | None = None) -> None:
    """Run one level of a written plate, under a memory limit when given, and print one JSON line: the level's
    figures, its wall seconds and the process' peak RSS (or the MemoryError it met)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("level", choices=sorted(LEVELS))
    parser.add_argument("--limit-bytes", type=int, default=0, help="RLIMIT_DATA for this process")
    parser.add_argument("--memory-bytes", type=int, default=256 << 20, help="the profile steps' memory budget")
    args = parser.parse_args(argv)
    if args.limit_bytes:
        resource.setrlimit(resource.RLIMIT_DATA, (args.limit_bytes, args.limit_bytes))
    plate = load(args.root)
    started = time.perf_counter()
    try:
        result = {"ok": True, **LEVELS[args.level](plate, args.root / "out", args.memory_bytes)}
    except MemoryError as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    result.update(level=args.level, seconds=round(time.perf_counter() - started, 2),
                  # VmHWM: this process' own high-water mark (ru_maxrss keeps the parent's from before exec)
                  peak_rss_mb=round(int(status.get("VmHWM", "0 kB").split()[0]) / 1024, 1),
                  vm_data_mb=round(int(status.get("VmData", "0 kB").split()[0]) / 1024, 1))
    print(json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main()
