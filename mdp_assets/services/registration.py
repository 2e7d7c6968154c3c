"""Registering a plate: validate its folder and record it in the plate registry (origin fixed from then on).
The intake sensor, `mdp register` and `mdp demo` come here."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mdp_assets.config import StepSettings, check_plate_overrides
from mdp_assets.engines.cellprofiler.pipelines import missing_pipeline_channels
from mdp_assets.errors import MdpError
from mdp_assets.plates.registry import PARTITIONS, Plate, plate_from_folder
from mdp_assets.storage.resource import MdpStorage


def register_plate(storage: MdpStorage, barcode: str, allow_incomplete: bool = False,
                   settings: StepSettings | None = None, fingerprint: bool = True) -> Plate:
    """Read the plate's folder from the landing zone, check it, and record it in the registry.
    `allow_incomplete` takes a plate with fewer images than its manifest expects, as it is; with `settings`,
    a plate the configured CellProfiler pipeline cannot read is refused. `fingerprint`: hash every image's
    content now (else the plate's first raw_images step does)."""
    folder = storage.plate_folder(barcode)
    check_plate_overrides(folder.manifest.settings, folder.root / "plate.yaml")
    plate = plate_from_folder(folder, storage.landing().source_uri(barcode, ""), allow_incomplete,
                              fingerprint=fingerprint)
    if settings is not None:
        check_pipeline_channels(settings.for_plate(folder.manifest.settings, barcode), plate, folder.root / "plate.yaml")
    return storage.registry().register(plate)


def check_pipeline_channels(settings: StepSettings, plate: Plate, where: Path) -> None:
    """With `engine.kind: cellprofiler`, every channel the analysis pipeline reads must be the plate's (with
    `auto` the built-in engine stands in instead, see engines/cellprofiler/choice.py)."""
    if not settings.uses_cellprofiler() or settings.engine_is_auto:
        return
    pipeline = Path(settings.cellprofiler.analysis_pipeline)
    missing = missing_pipeline_channels(pipeline, set(plate.channels))
    if missing:
        raise MdpError(f"plate {plate.barcode} cannot feed the CellProfiler pipeline {pipeline}: it reads channels "
                       f"{missing} (LoadData Orig<channel>) and the plate has {list(plate.channels)}; map them "
                       "under 'channels:' in plate.yaml, or name a pipeline for these channels", path=where)


def register_ready_plate(storage: MdpStorage, barcode: str, settings: StepSettings | None = None) -> str | None:
    """Register a plate the intake judged ready; returns why it cannot be registered, or None."""
    try:
        # Ticks stay short: the content fingerprints are taken by the plate's first raw_images step.
        register_plate(storage, barcode, settings=settings, fingerprint=False)
    except MdpError as exc:
        return str(exc)
    return None


def add_partitions(instance: dg.DagsterInstance, barcodes: list[str]) -> None:
    new = [b for b in barcodes if not instance.has_dynamic_partition(PARTITIONS, b)]
    if new:
        instance.add_dynamic_partitions(PARTITIONS, new)
