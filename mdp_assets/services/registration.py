"""Registering a plate: validate its folder and record it in the plate registry (origin fixed from then on).
The intake sensor, `mdp register` and `mdp demo` come here."""

from __future__ import annotations

import dagster as dg

from mdp_assets.config import check_plate_overrides
from mdp_assets.errors import MdpError
from mdp_assets.plates.registry import PARTITIONS, Plate, plate_from_folder
from mdp_assets.storage.resource import MdpStorage


def register_plate(storage: MdpStorage, barcode: str, allow_incomplete: bool = False) -> Plate:
    """Read the plate's folder from the landing zone, check it, and record it in the registry.
    `allow_incomplete` takes a plate with fewer images than its manifest expects, as it is."""
    folder = storage.plate_folder(barcode)
    check_plate_overrides(folder.manifest.settings, folder.root / "plate.yaml")
    plate = plate_from_folder(folder, storage.landing().source_uri(barcode, ""), allow_incomplete)
    return storage.registry().register(plate)


def register_ready_plate(storage: MdpStorage, barcode: str) -> str | None:
    """Register a plate the intake judged ready; returns why it cannot be registered, or None."""
    try:
        register_plate(storage, barcode)
    except MdpError as exc:
        return str(exc)
    return None


def add_partitions(instance: dg.DagsterInstance, barcodes: list[str]) -> None:
    new = [b for b in barcodes if not instance.has_dynamic_partition(PARTITIONS, b)]
    if new:
        instance.add_dynamic_partitions(PARTITIONS, new)
