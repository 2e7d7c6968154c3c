"""Images for the long term: a plate's raw images and masks as an OME-Zarr HCS plate."""

import dagster as dg
import pandas as pd

from mdp_assets.defs.plates.partitions import names_plate_and_level, plates_partitions
from mdp_assets.science.ome_zarr import NGFF_VERSION, PLATE_STORE, plate_fields, write_hcs_plate
from mdp_assets.services.runs import site_progress
from mdp_assets.storage.partitions import StoredPartition, staged_output
from mdp_assets.storage.resource import MdpStorage


@dg.asset(
    partitions_def=plates_partitions,
    group_name="images",
    kinds={"zarr"},
    description=f"The plate's raw images as an OME-Zarr HCS plate (OME-NGFF {NGFF_VERSION}, `{PLATE_STORE}`: "
    "plate / well row / well column / field), the format IDR and the BioImage Archive take: channel names and "
    "physical pixel sizes from the inventory, a resolution pyramid per field, the segmentation masks as labels "
    "(Nuclei, Cells) under each field. Built only when the storage policy gives the level a lifecycle.",
)
@names_plate_and_level
def ome_zarr_plate(
    context: dg.AssetExecutionContext,
    raw_images: pd.DataFrame,
    segmentation_masks: StoredPartition,
    storage: MdpStorage,
) -> dg.Output:
    plate = storage.plate(context.partition_key)
    plate.check_images_unchanged("ome_zarr_plate", raw_images)  # before any pixel is read
    masks = pd.read_parquet(segmentation_masks.path("sites.parquet"))
    fields = plate_fields(raw_images, masks, segmentation_masks.root)
    with storage.staging_dir("ome_zarr_plate") as staged:
        summary = write_hcs_plate(staged / PLATE_STORE, plate.barcode, fields, plate.manifest.nuclei_channel,
                                  site_progress(context.log.info, "ome_zarr_plate", len(fields)))
        metadata = {
            "format": f"OME-NGFF {NGFF_VERSION} HCS plate",
            "store": PLATE_STORE,
            "wells": len(summary.wells),
            "fields": summary.fields,
            "channels": ", ".join(summary.channels),
            "pixel_size_um": summary.pixel_size_um[-1] if summary.pixel_size_um else "not stated (scale 1)",
            "resolution_levels": summary.levels,
            "labels": ", ".join(summary.labels) or "none",
            "fields_with_labels": summary.fields_with_labels,
            "image_bytes_read": summary.image_bytes_read,
        }
        if summary.fields_with_labels < summary.fields:
            missing = summary.fields - summary.fields_with_labels
            metadata["fields_without_labels"] = f"{missing} of {summary.fields}: no saved label images"
        return staged_output(staged, metadata)
