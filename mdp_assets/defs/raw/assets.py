"""Level 1, raw images: the inventory of a plate's image files with their acquisition metadata, and (in the
policy's `copy` mode) the image files themselves, copied from the landing zone into the level's tier."""

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.plates.partitions import names_plate_and_level, plates_partitions
from mdp_assets.plates.fingerprints import check_unchanged
from mdp_assets.errors import MdpError
from mdp_assets.plates.inventory import STORED_FILE_COLUMN, PlateFolder, inventory_plate, plate_fingerprint
from mdp_assets.plates.naming import looks_like_image
from mdp_assets.plates.registry import Plate, plate_from_folder
from mdp_assets.storage import catalog
from mdp_assets.storage.partitions import table_output
from mdp_assets.storage.raw_images import copy_images, stored_relpath
from mdp_assets.storage.resource import MdpStorage


@dg.asset(
    partitions_def=plates_partitions,
    group_name="raw",
    kinds={"tiff", "parquet"},
    description="One row per image file: well, site, channel, uri, bytes, sha256, shape, dtype, acquisition "
    "metadata from TIFF tags and OME-XML, and the platemap's annotations; in the policy's copy mode the image "
    "files too (images/<file>, hashed while copied from the landing zone, verified, each sha256 in the partition "
    "record), which every level then reads from the tier. Refreshes the plate's registration (its origin stays "
    "as registered).",
)
@names_plate_and_level
def raw_images(context: dg.AssetExecutionContext, storage: MdpStorage, settings: StepSettings) -> dg.Output:
    released = catalog.landing_release(storage.catalog_path, context.partition_key)
    if released is not None:
        raise MdpError(f"plate {context.partition_key}: its landing images were released on {released['released_at']} "
                       f"after the verified copy in tier {released['tier']!r} (policy raw_images.landing); raw_images "
                       "cannot be made again from the landing zone. The stored copy is what the levels read")
    mode = storage.policy().raw_images.mode
    folder = storage.plate_folder(context.partition_key)
    landing = storage.landing()
    registry = storage.registry()
    registered = registry.get(folder.barcode)
    accepted = registered.accepted_image_count if registered else None
    plate = registry.register(plate_from_folder(folder, landing.source_uri(folder.barcode, ""),
                                                accepted_image_count=accepted, fingerprint=False))
    # Content fingerprints: taken now for a plate the sensor registered, else compared before the inventory.
    names = sorted(p.name for p in folder.images_dir.iterdir() if p.is_file() and looks_like_image(p.name))
    plate = registry.fingerprinted(plate, folder.images_dir, names)
    check_unchanged(plate.barcode, "raw_images", plate.image_fingerprints, {n: folder.images_dir / n for n in names},
                    folder.images_dir)
    # Every intake check (containment, pixels, fingerprints) has passed before a byte is copied. In copy mode
    # each image is hashed once, as it is copied, and must be its registered content; in reference mode the
    # inventory hashes each image again as it reads it: the same content, or the plate stops here.
    digests = {n: plate.image_fingerprints[n].sha256 for n in names if n in plate.image_fingerprints} \
        if mode == "copy" else None
    inventory = inventory_plate(folder, settings.compute.workers, accepted_image_count=plate.accepted_image_count,
                                digests=digests)
    plate.check_inventory(inventory, "raw_images")
    subdir = folder.manifest.images_prefix
    inventory.insert(inventory.columns.get_loc("uri") + 1, "source_uri",
                     [landing.source_uri(plate.barcode, subdir + name) for name in inventory["file_name"]])
    inventory.insert(inventory.columns.get_loc("source_uri") + 1, STORED_FILE_COLUMN,
                     [stored_relpath(name) if mode == "copy" else "" for name in inventory["file_name"]])
    table, unannotated = plate.annotate(inventory)
    if unannotated:
        context.log.warning(f"{plate.barcode}: wells without a platemap row: {unannotated}")
    with storage.staging_dir("raw_images") as staged:
        hashed = copy_images(folder.images_dir, dict(zip(table["file_name"], table["sha256"])), staged) \
            if mode == "copy" else ()
        return table_output(staged, table, _metadata(table, plate, folder, unannotated, mode), hashed)


def _metadata(table: pd.DataFrame, plate: Plate, folder: PlateFolder, unannotated: list[str], mode: str) -> dict:
    return {
        "raw_images_mode": mode,
        "image_bytes_stored": int(table["bytes"].sum()) if mode == "copy" else 0,
        "images": len(table),
        "image_bytes": int(table["bytes"].sum()),
        "wells": int(table["Metadata_Well"].nunique()),
        "sites": int(table[["Metadata_Well", "Metadata_Site"]].drop_duplicates().shape[0]),
        "channels": ", ".join(sorted(table["Metadata_Channel"].unique())),
        "origin": plate.manifest.origin,
        "identifiable_patient_data": plate.manifest.identifiable_patient_data,
        "released": plate.manifest.released,
        "landing_folder": dg.MetadataValue.path(str(folder.root)),
        "input_fingerprint": plate_fingerprint(folder),
        "wells_without_annotation": ", ".join(unannotated) or "none",
        "platemap_wells_not_imaged": ", ".join(sorted(set(plate.platemap["Metadata_Well"]) - set(table["Metadata_Well"])))
        or "none",
    }
