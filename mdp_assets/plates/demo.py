"""Synthetic Cell Painting plates for the demo and for scale tests.

A plate folder as an Opera Phenix would leave it (`r02c03f01p01-ch1sk1fk1fl1.tiff`), five uint16
OME-TIFF channels per site (DNA, ER, RNA, AGP, Mito) with channel names, pixel size, objective, exposure
and acquisition time in their OME-XML, a platemap with DMSO negative controls and three compounds, and a
`plate.yaml` manifest. Compounds change the cells in ways profiles can see: compound_A enlarges nuclei,
compound_B brightens mitochondria, compound_C shrinks cells and brightens the ER. Every channel carries
a different illumination vignette, so illumination correction has real work to do.
Correctness is shown on real data; these plates exist to exercise every level quickly and at scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pandas as pd
import tifffile
import yaml
from scipy import ndimage

from mdp_assets.checksums import atomic_path
from mdp_assets.plates.manifest import MANIFEST_NAME, check_barcode
from mdp_assets.plates.naming import row_number

CHANNELS = ("DNA", "ER", "RNA", "AGP", "Mito")
EMISSION_NM = {"DNA": 461, "ER": 520, "RNA": 570, "AGP": 620, "Mito": 680}
EXPOSURE_MS = {"DNA": 20.0, "ER": 60.0, "RNA": 40.0, "AGP": 80.0, "Mito": 50.0}
TREATMENTS = ("DMSO", "compound_A", "compound_B", "compound_C")
PIXEL_SIZE_UM = 0.65


@dataclass(frozen=True)
class DemoPlateSpec:
    barcode: str
    rows: str | tuple[str, ...] = "BCDE"  # row names; a tuple for 1536-well rows past Z ("AA", "AF")
    columns: tuple[int, ...] = (2, 3, 4, 5, 6, 7)
    sites_per_well: int = 2
    image_size: int = 256
    cells_per_site: int = 24
    seed: int = 0
    # Plates of other shapes, for the tests that every level copes with them:
    empty_wells: tuple[str, ...] = ()  # wells imaged with no cells in them
    negative_controls: bool = True  # False: every well treated, no DMSO to normalize to
    extra_channels: tuple[str, ...] = ()  # channels beyond the five Cell Painting ones (e.g. "Brightfield")
    # Scale tests (bench/plate_scale.py): synthesize this many distinct fields per treatment and reuse them
    # (a 384-well plate in seconds, not hours); None synthesizes every site. TIFF compression: zlib or none.
    site_pool: int | None = None
    compression: str | None = "zlib"
    origin: str = "internal"  # the manifest's origin (a public plate may be published)

    @property
    def wells(self) -> list[str]:
        return [f"{row}{col:02d}" for row in self.rows for col in self.columns]

    @property
    def channels(self) -> tuple[str, ...]:
        return (*CHANNELS, *self.extra_channels)

    @property
    def image_count(self) -> int:
        return len(self.wells) * self.sites_per_well * len(self.channels)


def platemap_for(spec: DemoPlateSpec) -> pd.DataFrame:
    """Treatments in a layout that puts every treatment in every row (no row effect confounding)."""
    rows = []
    treatments = TREATMENTS if spec.negative_controls else TREATMENTS[1:]
    for index, well in enumerate(spec.wells):
        treatment = treatments[index % len(treatments)]
        rows.append(
            {
                "well_position": well,
                "treatment": treatment,
                "dose_uM": 0.0 if treatment == "DMSO" else 10.0,
                "control_type": "negcon" if treatment == "DMSO" else "trt",
            }
        )
    return pd.DataFrame(rows)


def _ome_xml(channel: str, height: int, width: int, name: str, acquired: datetime) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" Creator="mdp demo generator">'
        '<Instrument ID="Instrument:0"><Objective ID="Objective:0:0" Model="20x Plan Apochromat (demo)" '
        'NominalMagnification="20.0" LensNA="0.8"/></Instrument>'
        f'<Image ID="Image:0" Name="{escape(name)}"><AcquisitionDate>{acquired.isoformat()}</AcquisitionDate>'
        '<InstrumentRef ID="Instrument:0"/><ObjectiveSettings ID="Objective:0:0"/>'
        f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="{width}" SizeY="{height}" '
        f'SizeC="1" SizeZ="1" SizeT="1" PhysicalSizeX="{PIXEL_SIZE_UM}" PhysicalSizeXUnit="µm" '
        f'PhysicalSizeY="{PIXEL_SIZE_UM}" PhysicalSizeYUnit="µm">'
        f'<Channel ID="Channel:0:0" Name="{channel}" EmissionWavelength="{EMISSION_NM.get(channel, 0)}" SamplesPerPixel="1"/>'
        '<TiffData IFD="0" PlaneCount="1"/>'
        f'<Plane TheC="0" TheZ="0" TheT="0" ExposureTime="{EXPOSURE_MS.get(channel, 100.0)}" ExposureTimeUnit="ms"/>'
        "</Pixels></Image></OME>"
    )


def _vignette(size: int, channel_index: int) -> np.ndarray:
    """A smooth multiplicative illumination field, brightest off-centre, different per channel."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = 0.45 + 0.03 * channel_index, 0.55 - 0.02 * channel_index
    return 1.0 - 0.45 * ((yy - cy) ** 2 + (xx - cx) ** 2) / 0.5


def _texture(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma)
    return field / (field.std() + 1e-9)


def synthesize_site(rng: np.random.Generator, treatment: str, size: int, n_cells: int,
                    extra_channels: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Five channels (float, roughly 0..1) of one field of view, and any extra ones (a transmitted-light
    look: the cells faintly darker than the background). A site with no cells is background only."""
    if n_cells == 0:
        return {name: np.zeros((size, size)) for name in (*CHANNELS, *extra_channels)}
    grid = math.ceil(math.sqrt(n_cells))
    spacing = size / grid
    centers = []
    for gy in range(grid):
        for gx in range(grid):
            if len(centers) < n_cells:
                jitter = rng.uniform(-0.2, 0.2, 2) * spacing
                centers.append(((gy + 0.5) * spacing + jitter[0], (gx + 0.5) * spacing + jitter[1]))
    centers_arr = np.array(centers)
    n = len(centers_arr)
    nucleus_scale = 1.35 if treatment == "compound_A" else 1.0
    cell_scale = 0.75 if treatment == "compound_C" else 1.0
    nuc_a = rng.normal(6.5, 0.7, n).clip(4.5) * nucleus_scale
    nuc_b = nuc_a * rng.uniform(0.7, 0.95, n)
    cell_a = rng.normal(spacing * 0.55, 1.0, n).clip(nuc_a * 1.6) * cell_scale
    cell_a = np.maximum(cell_a, nuc_a * 1.4)
    cell_b = cell_a * rng.uniform(0.75, 0.95, n)
    angle = rng.uniform(0, np.pi, n)

    seeds = np.zeros((size, size), dtype=bool)
    seeds[np.clip(centers_arr[:, 0].astype(int), 0, size - 1), np.clip(centers_arr[:, 1].astype(int), 0, size - 1)] = True
    _, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    owner_lookup = -np.ones((size, size), dtype=int)
    owner_lookup[np.clip(centers_arr[:, 0].astype(int), 0, size - 1), np.clip(centers_arr[:, 1].astype(int), 0, size - 1)] = np.arange(n)
    owner = owner_lookup[iy, ix]
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    dy, dx = yy - centers_arr[owner, 0], xx - centers_arr[owner, 1]
    cos, sin = np.cos(angle[owner]), np.sin(angle[owner])
    u, v = dx * cos + dy * sin, -dx * sin + dy * cos
    r_nucleus = (u / nuc_a[owner]) ** 2 + (v / nuc_b[owner]) ** 2
    r_cell = (u / cell_a[owner]) ** 2 + (v / cell_b[owner]) ** 2
    nucleus = r_nucleus <= 1.0
    cell = r_cell <= 1.0
    cytoplasm = cell & ~nucleus
    membrane = cell & (r_cell > 0.7)

    brightness = rng.lognormal(0, 0.15, n)[owner]
    er_level = 0.45 if treatment == "compound_C" else 0.25
    mito_level = 0.45 if treatment == "compound_B" else 0.2
    fine, coarse = _texture(rng, size, 1.0), _texture(rng, size, 3.0)
    images = {
        "DNA": nucleus * brightness * (0.55 + 0.08 * coarse),
        "ER": cytoplasm * brightness * er_level * (1.0 + 0.3 * np.exp(-r_cell)) * (1 + 0.1 * coarse),
        "RNA": (nucleus * 0.12 + cytoplasm * 0.15) * brightness * (1 + 0.25 * (fine > 1.2)),
        "AGP": (cell * 0.12 + membrane * 0.25) * brightness * (1 + 0.1 * fine),
        "Mito": cytoplasm * brightness * mito_level * (1 + 0.35 * np.clip(fine, 0, None)),
        **{name: 0.5 - 0.1 * cell + 0.02 * coarse for name in extra_channels},
    }
    return {name: ndimage.gaussian_filter(img.astype(float), 1.0) for name, img in images.items()}


def write_demo_plate(landing_zone: Path, spec: DemoPlateSpec) -> Path:
    """Write one plate folder into the landing zone (atomically: it appears complete or not at all)."""
    final = landing_zone / check_barcode(spec.barcode, "demo plate barcode")
    if (final / MANIFEST_NAME).exists():
        return final
    rng = np.random.default_rng(spec.seed)
    platemap = platemap_for(spec)
    treatment_by_well = dict(zip(platemap["well_position"], platemap["treatment"]))
    start = datetime(2026, 3, 2, 9, 0, 0)
    pool: dict[tuple[str, int], dict[str, np.ndarray]] = {}
    with atomic_path(final) as folder:
        folder.mkdir(parents=True)
        for well_index, well in enumerate(spec.wells):
            row, col = row_number(well.rstrip("0123456789")), int(well.lstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
            cells = 0 if well in spec.empty_wells else spec.cells_per_site
            for site in range(1, spec.sites_per_well + 1):
                treatment = treatment_by_well[well]
                if spec.site_pool and cells:
                    key = (treatment, (well_index * spec.sites_per_well + site) % spec.site_pool)
                    if key not in pool:
                        pool[key] = synthesize_site(rng, treatment, spec.image_size, cells, spec.extra_channels)
                    channels = pool[key]
                else:
                    channels = synthesize_site(rng, treatment, spec.image_size, cells, spec.extra_channels)
                acquired = start + timedelta(seconds=30 * (well_index * spec.sites_per_well + site))
                for channel_index, name in enumerate(spec.channels, start=1):
                    signal = channels[name] * _vignette(spec.image_size, channel_index)
                    noisy = 0.02 + signal + rng.normal(0, 0.004, signal.shape)
                    pixels = np.clip(noisy * 30000 + 100, 0, 65535).astype(np.uint16)
                    file_name = f"r{row:02d}c{col:02d}f{site:02d}p01-ch{channel_index}sk1fk1fl1.tiff"
                    tifffile.imwrite(
                        folder / file_name,
                        pixels,
                        description=_ome_xml(name, *pixels.shape, file_name, acquired).encode("utf-8"),
                        metadata=None,
                        compression=spec.compression,
                    )
        platemap.to_csv(folder / "platemap.csv", index=False)
        manifest = {
            "barcode": spec.barcode,
            "origin": spec.origin,
            "identifiable_patient_data": False,
            "platemap": "platemap.csv",
            "naming_scheme": "phenix",
            "nuclei_channel": "DNA",
            "expected_image_count": spec.image_count,
            "treatment_column": "treatment",
        }
        if spec.negative_controls:
            manifest["negative_control"] = {"column": "treatment", "value": "DMSO"}
        (folder / MANIFEST_NAME).write_text(yaml.safe_dump(manifest, sort_keys=False))
    return final


def demo_specs(count: int = 2, **overrides) -> list[DemoPlateSpec]:
    return [DemoPlateSpec(barcode=f"DEMO-{index:04d}", seed=index, **overrides) for index in range(1, count + 1)]

