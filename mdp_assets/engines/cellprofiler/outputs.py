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


def read_csv_output(folder: Path, prefix: str = "") -> CellProfilerOutput:
    """ExportToSpreadsheet's output folder (one CSV per table, `<prefix><Table>.csv`)."""
    image_path = folder / f"{prefix}Image.csv"
    if not image_path.exists():
        raise MdpError(f"no {prefix}Image.csv: is this a CellProfiler ExportToSpreadsheet output folder?", path=folder)
    try:
        output = CellProfilerOutput(_normalize_image(pd.read_csv(image_path)))
        for path in sorted(folder.glob(f"{prefix}*.csv")):
            name = path.stem[len(prefix):]
            if name not in NOT_OBJECTS:
                output.objects[name] = _normalize_object(name, pd.read_csv(path), path)
    except pd.errors.ParserError as exc:
        raise MdpError(f"malformed CellProfiler CSV: {exc}", path=folder) from exc
    return output


def read_sqlite_output(database: Path, prefix: str = "") -> CellProfilerOutput:
    """ExportToDatabase's SQLite file (`<prefix>Per_Image` and `<prefix>Per_<Object>` tables)."""
    if not database.exists():
        raise MdpError("CellProfiler SQLite output not found", path=database)
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if f"{prefix}Per_Image" not in tables:
            raise MdpError(f"no {prefix}Per_Image table: is this a CellProfiler ExportToDatabase file?", path=database)
        output = CellProfilerOutput(_normalize_image(pd.read_sql_query(f'SELECT * FROM "{prefix}Per_Image"', connection)))
        for table in tables:
            name = table.removeprefix(f"{prefix}Per_")
            if table.startswith(f"{prefix}Per_") and name not in NOT_OBJECTS | {"RelationshipTypes", "Relationships"}:
                frame = pd.read_sql_query(f'SELECT * FROM "{table}"', connection)
                output.objects[name] = _normalize_object(name, frame, database)
    return output


def read_output(folder: Path, export=None) -> CellProfilerOutput:
    """A CellProfiler run's output folder, read as its export module (describe.Export) says: the SQLite file
    ExportToDatabase names, or ExportToSpreadsheet's CSVs. Without a description: a `*.db` file, else CSVs."""
    if export is None:
        databases = sorted(folder.glob("*.db"))
        return read_sqlite_output(databases[0]) if databases else read_csv_output(folder)
    where = folder / export.subfolder if export.subfolder else folder
    if export.kind == "database":
        database = where / export.file_name
        if not database.exists():
            found = sorted(p.name for p in where.iterdir()) if where.is_dir() else []
            raise MdpError(f"ExportToDatabase wrote no {export.file_name} (the file its settings name); the output "
                           f"folder holds {found[:20]}", path=where)
        return read_sqlite_output(database, export.table_prefix)
    return read_csv_output(where, export.table_prefix)


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


def _parents(output: CellProfilerOutput, name: str) -> list[str]:
    table = output.objects[name]
    return [p for p in output.objects if p != name and f"{name}_Parent_{p}" in table.columns]


Layout = tuple[str, list[tuple[str, str, str]]]


def compartments(output: CellProfilerOutput, rows: dict[str, int] | None = None) -> Layout:
    """How the exported objects make one cell, read from the tables' parent columns (whatever the pipeline
    names its objects): (the cell object, [(object, joined on column, of object)]). A tertiary object (two
    parents, as IdentifyTertiaryObjects makes) joins its larger parent, the cell, and its smaller one;
    otherwise an object with a parent is the cell and its parent joins it; a lone object is the cell.
    `rows` gives the objects' counts when `output` holds only some of them (a batch of image sets)."""
    counts = rows or {name: len(table) for name, table in output.objects.items()}
    if not output.objects:
        raise MdpError("the pipeline exported no object table")
    for name in sorted(output.objects):
        parents = _parents(output, name)
        if len(parents) >= 2:
            larger = next((p for p in parents if any(q in parents for q in _parents(output, p))), parents[0])
            smaller = next(p for p in parents if p != larger)
            return larger, [(name, f"{name}_Parent_{larger}", larger), (smaller, f"{name}_Parent_{smaller}", name)]
    for name in sorted(output.objects, key=lambda n: -counts[n]):
        parents = _parents(output, name)
        if parents:
            return name, [(parents[0], f"{name}_Parent_{parents[0]}", name)]
    if len(output.objects) == 1:
        return next(iter(output.objects)), []
    raise MdpError(f"the exported objects {sorted(output.objects)} are not related by parent columns "
                   "(IdentifySecondaryObjects / IdentifyTertiaryObjects make them); mdp cannot tell which is the cell")


def single_cells(output: CellProfilerOutput, layout: Layout | None = None) -> pd.DataFrame:
    """One row per cell and the objects related to it (for a Cell Painting pipeline: Cells, its Cytoplasm and
    its Nuclei, by CellProfiler's parent relationships), with the image's Metadata_ columns. Feature names
    keep their compartment prefix; ids become Metadata_ columns. Object names come from the tables; `layout`
    (from `compartments` of the whole plate) when `output` is a batch of its image sets."""
    cell, joins = layout or compartments(output)
    merged = output.objects[cell]
    for name, column, of in joins:
        key = ["ImageNumber", "ObjectNumber"] if of == cell else ["ImageNumber", f"{of}_ObjectNumber"]
        table = output.objects[name].rename(columns={"ObjectNumber": f"{name}_ObjectNumber"})
        if of == cell:
            merged = merged.merge(table, left_on=key, right_on=["ImageNumber", column], how="left")
        else:
            merged = merged.merge(table, left_on=["ImageNumber", column], right_on=["ImageNumber", f"{name}_ObjectNumber"],
                                  how="left")
    merged = merged.drop(columns=[f"{name}_ObjectNumber" for name, _, _ in joins if f"{name}_ObjectNumber" in merged.columns])
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


def features_from_cellprofiler(output: CellProfilerOutput, layout: Layout | None = None) -> pd.DataFrame:
    """Single cells in mdp's schema: Metadata_Well/Site/ObjectNumber, relationship ids as Metadata_, features."""
    cells = single_cells(output, layout)
    identifiers = {c: f"Metadata_{c}" for c in cells.columns if any(m in c for m in IDENTIFIER_MARKERS)}
    cells = cells.rename(columns=identifiers)
    if "Metadata_Site" in cells.columns:
        cells["Metadata_Site"] = pd.to_numeric(cells["Metadata_Site"], errors="coerce").astype("Int64")
    meta = [c for c in cells.columns if c.startswith("Metadata_")]
    return cells[meta + [c for c in cells.columns if c not in meta]]
