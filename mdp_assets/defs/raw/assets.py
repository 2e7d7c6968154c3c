"""Level 1, raw images: the inventory of a plate's image files with their acquisition metadata."""


import dagster as dg
import pandas as pd

from mdp_assets.defs.plates.partitions import plates_partitions
from mdp_assets.storage.io_manager import table_output
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.plates.inventory import inventory_plate, plate_fingerprint
from mdp_assets.plates.registry import annotate_images


@dg.asset(
    partitions_def=plates_partitions,
    group_name="raw",
    kinds={"tiff", "parquet"},
    description="One row per image file: well, site, channel, uri, bytes, sha256, shape, dtype, acquisition "
    "metadata from TIFF tags and OME-XML, and the platemap's annotations.",
)
def raw_images(context: dg.AssetExecutionContext, storage: MdpStorage) -> dg.Output:
    plate = storage.plate_folder(context.partition_key)
    inventory = inventory_plate(plate)
    landing = storage.landing()
    subdir = "" if plate.manifest.images_subdir in (".", "") else plate.manifest.images_subdir.rstrip("/") + "/"
    inventory.insert(
        inventory.columns.get_loc("uri") + 1,
        "source_uri",
        [landing.source_uri(plate.barcode, subdir + name) for name in inventory["file_name"]],
    )
    table, unannotated = annotate_images(inventory, plate)
    if unannotated:
        context.log.warning(f"{plate.barcode}: wells without a platemap row: {unannotated}")
    return table_output(
        storage,
        "raw_images",
        table,
        {
            "images": len(table),
            "image_bytes": int(table["bytes"].sum()),
            "wells": int(table["Metadata_Well"].nunique()),
            "sites": int(table[["Metadata_Well", "Metadata_Site"]].drop_duplicates().shape[0]),
            "channels": ", ".join(sorted(table["Metadata_Channel"].unique())),
            "origin": plate.manifest.origin,
            "identifiable_patient_data": plate.manifest.identifiable_patient_data,
            "released": plate.manifest.released,
            "landing_folder": dg.MetadataValue.path(str(plate.root)),
            "input_fingerprint": plate_fingerprint(plate),
            "wells_without_annotation": ", ".join(unannotated) or "none",
        },
    )
