"""CellProfiler's outputs, read into one form whatever the export module, and the inputs it needs.

CellProfiler writes either CSV files (ExportToSpreadsheet: `Image.csv`, `<Object>.csv`, feature names
without the object prefix) or a SQLite database (ExportToDatabase: `Per_Image`, `Per_<Object>`, prefixed
names, `<Object>_Number_Object_Number`). Both become a `CellProfilerOutput`: the image table and one table
per object with `ImageNumber`, `ObjectNumber` and `<Object>_<FeatureGroup>_<Feature>` columns, the names
pycytominer and CytoTable use. Single cells join Cells, Cytoplasm and Nuclei by their parent relationships.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mdp_assets.errors import MdpError

NOT_OBJECTS = {"Image", "Experiment"}


@dataclass
class CellProfilerOutput:
    image: pd.DataFrame
    objects: dict[str, pd.DataFrame] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {name: len(table) for name, table in sorted(self.objects.items())}


def pipeline_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _normalize_object(name: str, table: pd.DataFrame, source: Path) -> pd.DataFrame:
    if "ImageNumber" not in table.columns:
        raise MdpError(f"object table {name!r} has no ImageNumber column", path=source)
    number = f"{name}_Number_Object_Number"
    if "ObjectNumber" not in table.columns:
        if number not in table.columns:
            raise MdpError(f"object table {name!r} has neither ObjectNumber nor {number}", path=source)
        table = table.rename(columns={number: "ObjectNumber"})
    else:
        table = table.drop(columns=[c for c in (number, "Number_Object_Number") if c in table.columns])
    renamed = {c: c if c in ("ImageNumber", "ObjectNumber") or c.startswith(f"{name}_") else f"{name}_{c}"
               for c in table.columns}
    table = table.rename(columns=renamed)
    return table.sort_values(["ImageNumber", "ObjectNumber"]).reset_index(drop=True)


def _normalize_image(table: pd.DataFrame) -> pd.DataFrame:
    renamed = {c: c if c == "ImageNumber" or c.startswith("Image_") else f"Image_{c}" for c in table.columns}
    return table.rename(columns=renamed).sort_values("ImageNumber").reset_index(drop=True)


def read_csv_output(folder: Path) -> CellProfilerOutput:
    """ExportToSpreadsheet's output folder (one CSV per table)."""
    image_path = folder / "Image.csv"
    if not image_path.exists():
        raise MdpError("no Image.csv: is this a CellProfiler ExportToSpreadsheet output folder?", path=folder)
    try:
        output = CellProfilerOutput(_normalize_image(pd.read_csv(image_path)))
        for path in sorted(folder.glob("*.csv")):
            if path.stem not in NOT_OBJECTS:
                output.objects[path.stem] = _normalize_object(path.stem, pd.read_csv(path), path)
    except pd.errors.ParserError as exc:
        raise MdpError(f"malformed CellProfiler CSV: {exc}", path=folder) from exc
    return output


def read_sqlite_output(database: Path) -> CellProfilerOutput:
    """ExportToDatabase's SQLite file (Per_Image and Per_<Object> tables)."""
    if not database.exists():
        raise MdpError("CellProfiler SQLite output not found", path=database)
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if "Per_Image" not in tables:
            raise MdpError("no Per_Image table: is this a CellProfiler ExportToDatabase file?", path=database)
        output = CellProfilerOutput(_normalize_image(pd.read_sql_query("SELECT * FROM Per_Image", connection)))
        for table in tables:
            name = table.removeprefix("Per_")
            if table.startswith("Per_") and name not in NOT_OBJECTS | {"RelationshipTypes", "Relationships"}:
                frame = pd.read_sql_query(f'SELECT * FROM "{table}"', connection)
                output.objects[name] = _normalize_object(name, frame, database)
    return output


def read_output(folder: Path) -> CellProfilerOutput:
    databases = sorted(folder.glob("*.db"))
    return read_sqlite_output(databases[0]) if databases else read_csv_output(folder)


def merge_groups(outputs: Iterable[CellProfilerOutput]) -> CellProfilerOutput:
    """One output from several groups' outputs, renumbering images so ImageNumber stays unique."""
    images, objects, offset = [], {}, 0
    for output in outputs:
        images.append(output.image.assign(ImageNumber=output.image["ImageNumber"] + offset))
        for name, table in output.objects.items():
            objects.setdefault(name, []).append(table.assign(ImageNumber=table["ImageNumber"] + offset))
        offset += int(output.image["ImageNumber"].max()) if len(output.image) else 0
    return CellProfilerOutput(
        pd.concat(images, ignore_index=True) if images else pd.DataFrame(columns=["ImageNumber"]),
        {name: pd.concat(tables, ignore_index=True) for name, tables in objects.items()},
    )


def single_cells(output: CellProfilerOutput) -> pd.DataFrame:
    """One row per cell: Cells, its Cytoplasm and its Nuclei (by CellProfiler's parent relationships), with the
    image's Metadata_ columns. Feature names keep their compartment prefix; ids become Metadata_ columns."""
    for needed in ("Cells", "Cytoplasm", "Nuclei"):
        if needed not in output.objects:
            raise MdpError(f"the pipeline produced no {needed!r} objects; found {sorted(output.objects)}")
    cells, cytoplasm, nuclei = (output.objects[n] for n in ("Cells", "Cytoplasm", "Nuclei"))
    merged = cells.merge(
        cytoplasm, left_on=["ImageNumber", "ObjectNumber"], right_on=["ImageNumber", "Cytoplasm_Parent_Cells"],
        how="left", suffixes=("", "_cytoplasm"),
    ).merge(
        nuclei.rename(columns={"ObjectNumber": "Nuclei_ObjectNumber"}),
        left_on=["ImageNumber", "Cytoplasm_Parent_Nuclei"], right_on=["ImageNumber", "Nuclei_ObjectNumber"], how="left",
    )
    merged = merged.drop(columns=[c for c in ("ObjectNumber_cytoplasm", "Nuclei_ObjectNumber") if c in merged.columns])
    image_metadata = [c for c in output.image.columns if c.startswith("Image_Metadata_")]
    metadata = output.image[["ImageNumber", *image_metadata]].rename(
        columns={c: c.removeprefix("Image_") for c in image_metadata})
    merged = merged.merge(metadata, on="ImageNumber", how="left").rename(
        columns={"ImageNumber": "Metadata_ImageNumber", "ObjectNumber": "Metadata_ObjectNumber"})
    meta = [c for c in merged.columns if c.startswith("Metadata_")]
    return merged[meta + [c for c in merged.columns if c not in meta]]


def file_list(paths: Iterable[Path], destination: Path) -> Path:
    destination.write_text("".join(f"{Path(p).resolve().as_uri()}\n" for p in paths))
    return destination


def uses_loaddata(pipeline: Path) -> bool:
    """Whether a pipeline reads its images through a LoadData module (else through its input modules)."""
    return any(line.startswith("LoadData:[") for line in pipeline.read_text(errors="replace").splitlines())


def split_wells(wells: list[str], groups: int) -> list[list[str]]:
    """Wells in `groups` contiguous, nearly equal groups (a group is one CellProfiler process)."""
    wells = sorted(wells)
    groups = max(1, min(groups, len(wells)))
    size, extra = divmod(len(wells), groups)
    out, start = [], 0
    for index in range(groups):
        end = start + size + (1 if index < extra else 0)
        out.append(wells[start:end])
        start = end
    return out


IDENTIFIER_MARKERS = ("_Parent_", "_Number_Object_Number")


def features_from_cellprofiler(output: CellProfilerOutput) -> pd.DataFrame:
    """Single cells in mdp's schema: Metadata_Well/Site/ObjectNumber, relationship ids as Metadata_, features."""
    cells = single_cells(output)
    identifiers = {c: f"Metadata_{c}" for c in cells.columns if any(m in c for m in IDENTIFIER_MARKERS)}
    cells = cells.rename(columns=identifiers)
    if "Metadata_Site" in cells.columns:
        cells["Metadata_Site"] = pd.to_numeric(cells["Metadata_Site"], errors="coerce").astype("Int64")
    meta = [c for c in cells.columns if c.startswith("Metadata_")]
    return cells[meta + [c for c in cells.columns if c not in meta]]
