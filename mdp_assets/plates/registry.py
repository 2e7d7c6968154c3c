"""What every level of a plate needs to know about it, carried with `raw_images`.

The manifest and the platemap annotations enter at `raw_images` and travel in its Parquet file
(pandas `attrs`, stored in the Parquet schema metadata), so later levels never reach back to the
landing zone: the plate can be processed again after its landing folder has been archived.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import PlateFolder
from mdp_assets.plates.manifest import PlateManifest
from mdp_assets.plates.platemap import metadata_name, read_platemap

ATTRS_KEY = "mdp_plate"
PERTURBATION = "Metadata_Perturbation"
ORIGIN = "Metadata_Origin"


@dataclass(frozen=True)
class PlateContext:
    manifest: PlateManifest
    annotation_columns: tuple[str, ...]

    @property
    def negative_control_query(self) -> str | None:
        control = self.manifest.negative_control
        if control is None:
            return None
        return f"`{metadata_name(control.column)}` == {control.value!r}"

    @classmethod
    def of(cls, raw_images: pd.DataFrame) -> PlateContext:
        stored: dict[str, Any] | None = raw_images.attrs.get(ATTRS_KEY)
        if not stored:
            raise MdpError("raw_images carries no plate context (written by an older mdp?); re-materialize it")
        return cls(PlateManifest.model_validate(stored["manifest"]), tuple(stored["annotation_columns"]))

    def well_metadata(self, raw_images: pd.DataFrame) -> pd.DataFrame:
        """One row per well: Metadata_Plate, Metadata_Well and every platemap annotation."""
        columns = ["Metadata_Plate", "Metadata_Well", *self.annotation_columns]
        return raw_images[columns].drop_duplicates("Metadata_Well").reset_index(drop=True)


def annotate_images(images: pd.DataFrame, plate: PlateFolder) -> tuple[pd.DataFrame, list[str]]:
    """Join the platemap onto the image inventory and attach the plate context.

    Returns the annotated table and the wells that have images but no platemap row.
    """
    manifest = plate.manifest
    platemap = read_platemap(plate.platemap_path, manifest.platemap_well_column)
    for needed in (manifest.treatment_column, manifest.negative_control and manifest.negative_control.column):
        if needed and metadata_name(needed) not in platemap.columns:
            raise MdpError(
                f"manifest names platemap column {needed!r}, which the platemap lacks "
                f"(it has {[c.removeprefix('Metadata_') for c in platemap.columns]})",
                path=plate.platemap_path,
            )
    platemap = platemap.drop(columns=[c for c in platemap.columns if c in images.columns and c != "Metadata_Well"])
    annotated = images.merge(platemap, on="Metadata_Well", how="left", validate="many_to_one")
    annotated[ORIGIN] = manifest.origin
    if manifest.treatment_column:
        annotated[PERTURBATION] = annotated[metadata_name(manifest.treatment_column)]
    annotation_columns = [c for c in platemap.columns if c != "Metadata_Well"] + [ORIGIN]
    if manifest.treatment_column:
        annotation_columns.append(PERTURBATION)
    unannotated = sorted(set(images["Metadata_Well"]) - set(platemap["Metadata_Well"]))
    annotated.attrs[ATTRS_KEY] = {
        "manifest": manifest.model_dump(mode="json"),
        "annotation_columns": annotation_columns,
    }
    return annotated, unannotated
