"""Level 1, raw images: the inventory of a plate's image files with their acquisition metadata."""

import dagster as dg

from mdp_assets.config import StepSettings
from mdp_assets.defs.plates.partitions import names_plate_and_level, plates_partitions
from mdp_assets.plates.fingerprints import check_unchanged
from mdp_assets.plates.inventory import inventory_plate, plate_fingerprint
from mdp_assets.plates.naming import looks_like_image
from mdp_assets.plates.registry import plate_from_folder
from mdp_assets.storage.resource import MdpStorage


@dg.asset(
    partitions_def=plates_partitions,
    group_name="raw",
    kinds={"tiff", "parquet"},
    description="One row per image file: well, site, channel, uri, bytes, sha256, shape, dtype, acquisition "
    "metadata from TIFF tags and OME-XML, and the platemap's annotations. Refreshes the plate's registration "
    "(its origin stays as registered).",
)
@names_plate_and_level
def raw_images(context: dg.AssetExecutionContext, storage: MdpStorage, settings: StepSettings) -> dg.Output:
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
    inventory = inventory_plate(folder, settings.compute.workers, accepted_image_count=plate.accepted_image_count)
    # The inventory hashed each image again as it read it: the same content, or the plate stops here.
    plate.check_inventory(inventory, "raw_images")
    subdir = "" if folder.manifest.images_subdir in (".", "") else folder.manifest.images_subdir.rstrip("/") + "/"
    inventory.insert(inventory.columns.get_loc("uri") + 1, "source_uri",
                     [landing.source_uri(plate.barcode, subdir + name) for name in inventory["file_name"]])
    table, unannotated = plate.annotate(inventory)
    if unannotated:
        context.log.warning(f"{plate.barcode}: wells without a platemap row: {unannotated}")
    return storage.table_output("raw_images", table, {
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
    })
