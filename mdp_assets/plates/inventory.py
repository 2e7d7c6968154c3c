"""The raw_images level: an inventory of a plate folder, one row per image file.

Each row names the image (Metadata_Plate, Metadata_Well, Metadata_Site, Metadata_Channel, z/t where the
scheme has them), where it is (uri), what it is (bytes, sha256, width, height, dtype) and how it was
acquired (Metadata_ columns read from TIFF tags and OME-XML).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from mdp_assets.errors import MdpError
from mdp_assets.checksums import sha256_file, sha256_text
from mdp_assets.parallel import map_sites
from mdp_assets.plates.harmony import acquisition_metadata, find_index_file, read_harmony_index
from mdp_assets.plates.imagexpress import find_htd, read_htd
from mdp_assets.plates.manifest import MANIFEST_NAME, PlateManifest, load_manifest
from mdp_assets.plates.naming import NamingScheme, channel_identifier, looks_like_image
from mdp_assets.plates.tiff_metadata import read_tiff_info

# The image's path inside the raw_images partition when its bytes are stored in the tiers (copy mode); empty
# when they stay in the landing zone (reference mode). A stored table read back points `uri` there.
STORED_FILE_COLUMN = "stored_relpath"

# Acquisition metadata carried from here into every level below (the playbook's rule on metadata).
ACQUISITION_COLUMNS = [
    "Metadata_PhysicalSizeX_um",
    "Metadata_PhysicalSizeY_um",
    "Metadata_Objective",
    "Metadata_ObjectiveMagnification",
    "Metadata_ObjectiveNA",
    "Metadata_ExposureTime_ms",
    "Metadata_AcquisitionTime",
]


@dataclass(frozen=True)
class PlateFolder:
    """A plate folder with its validated manifest."""

    root: Path
    manifest: PlateManifest

    @classmethod
    def open(cls, root: Path) -> PlateFolder:
        if not root.is_dir():
            raise MdpError("plate folder not found", path=root)
        return cls(root=root, manifest=load_manifest(root / MANIFEST_NAME))

    @property
    def barcode(self) -> str:
        return self.manifest.barcode

    @property
    def images_dir(self) -> Path:
        return self.root / self.manifest.images_subdir

    @property
    def platemap_path(self) -> Path:
        return self.root / self.manifest.platemap

    def naming_scheme(self) -> NamingScheme:
        return NamingScheme(self.manifest.naming_scheme, self.manifest.naming_pattern, self.manifest.channels)


def _describe_image(image: tuple[Path, str | None, str | None], plate: PlateFolder, scheme: NamingScheme) -> dict:
    """One image's row; `image` is its path, the channel name the instrument's plate file gives it, and its
    sha256 when it was hashed elsewhere (as raw_images copied it), else None: hashed here."""
    path, instrument_channel, digest = image
    name = scheme.parse(path.name)
    assert name is not None
    info = read_tiff_info(path)
    channel = name.channel
    if not name.channel_is_named:
        # Channel names: the manifest's mapping of the file token, else the instrument's plate file (Harmony
        # index, HTD), else the image's own metadata (OME-XML, Harmony or MetaSeries XML) of a single-channel
        # file, mapped by the manifest too; else the token itself ('5' -> 'Ch5').
        found = instrument_channel or (info.channel_names[0] if len(info.channel_names) == 1 else None)
        channel = (plate.manifest.channels.get(found) or channel_identifier(found)) if found else channel_identifier(channel)
    exposure = next((e for e in info.exposure_ms if e is not None), None)
    return {
        "Metadata_Plate": plate.barcode,
        "Metadata_Well": name.well,
        "Metadata_Site": name.site,
        "Metadata_Channel": channel,
        "Metadata_Z": name.z,
        "Metadata_T": name.t,
        "file_name": path.name,
        "uri": path.resolve().as_uri(),
        "bytes": path.stat().st_size,
        "sha256": digest or sha256_file(path),
        "width": info.width,
        "height": info.height,
        "dtype": info.dtype,
        "axes": info.axes,
        "is_ome": info.is_ome,
        "dimension_order": info.dimension_order,
        "ome_channel_names": "|".join(info.channel_names) or None,
        "Metadata_PhysicalSizeX_um": info.physical_size_x_um,
        "Metadata_PhysicalSizeY_um": info.physical_size_y_um,
        "Metadata_Objective": info.objective,
        "Metadata_ObjectiveMagnification": info.objective_magnification,
        "Metadata_ObjectiveNA": info.objective_na,
        "Metadata_ExposureTime_ms": exposure,
        "Metadata_AcquisitionTime": info.acquisition_time,
        "software": info.software,
    }


def inventory_plate(plate: PlateFolder, workers: int = 0, accepted_image_count: int | None = None,
                    digests: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Checksum and describe every image of a plate (in `workers` processes, 0: one per core); any inconsistency
    is an MdpError naming the files. `accepted_image_count`: the plate was registered incomplete with that many
    images. `digests` (file name -> sha256): images hashed elsewhere (raw_images hashes each image as it copies it
    into its tier, and refuses one that differs); for those the inventory reads only the headers."""
    scheme = plate.naming_scheme()
    if not plate.images_dir.is_dir():
        raise MdpError("images folder not found", path=plate.images_dir)
    candidates = sorted(p for p in plate.images_dir.iterdir() if p.is_file() and looks_like_image(p.name))
    unmatched = [p.name for p in candidates if scheme.parse(p.name) is None]
    if unmatched:
        raise MdpError(
            f"{len(unmatched)} image file(s) do not match naming scheme {scheme.name!r}: {unmatched[:10]}",
            path=plate.images_dir,
        )
    expected = accepted_image_count or plate.manifest.expected_image_count
    if len(candidates) != expected:
        raise MdpError(
            f"expected {expected} images (manifest expected_image_count"
            f"{', or as registered incomplete' if accepted_image_count else ''}) but found {len(candidates)}",
            path=plate.images_dir,
        )
    harmony = _harmony_metadata(plate.images_dir)
    instrument_channels = instrument_channel_names(plate, [p.name for p in candidates])
    digests = digests or {}
    rows = map_sites(partial(_describe_image, plate=plate, scheme=scheme),
                     [(p, instrument_channels.get(p.name), digests.get(p.name)) for p in candidates], workers)
    table = pd.DataFrame(rows)
    if harmony is not None:
        table = _fill_from_instrument(table, harmony.drop(columns="harmony_channel_name"))
    if plate.manifest.pixel_size_um is not None:
        # The manifest states the pixel size only for images whose metadata do not (see the README).
        for axis in ("X", "Y"):
            column = f"Metadata_PhysicalSize{axis}_um"
            table[column] = table[column].astype(float).fillna(plate.manifest.pixel_size_um)
    _check_complete_sites(table, plate.images_dir)
    table = table.sort_values(["Metadata_Well", "Metadata_Site", "Metadata_Channel", "file_name"])
    return table.reset_index(drop=True)


def instrument_channel_names(plate: PlateFolder, file_names: list[str]) -> dict[str, str]:
    """File name -> the channel name the instrument's plate file gives it: the Harmony index (per file) or
    the ImageXpress HTD (WaveName<n> for the file's w<n>)."""
    names: dict[str, str] = {}
    index = find_index_file(plate.images_dir)
    if index is not None:
        _, images = read_harmony_index(index)
        names.update(zip(images["URL"], images["ChannelName"]))
    htd = find_htd(plate.images_dir, plate.root)
    if htd is not None:
        waves = read_htd(htd).wave_names
        scheme = plate.naming_scheme()
        for file_name in file_names:
            parsed = scheme.parse(file_name)
            if parsed is not None and parsed.channel_token in waves:
                names.setdefault(file_name, waves[parsed.channel_token])
    return names


def _harmony_metadata(images_dir: Path) -> pd.DataFrame | None:
    index = find_index_file(images_dir)
    if index is None:
        return None
    _, images = read_harmony_index(index)
    return acquisition_metadata(images)


def _fill_from_instrument(table: pd.DataFrame, instrument: pd.DataFrame) -> pd.DataFrame:
    """Acquisition metadata from the instrument's index, by file name. OME-XML stays authoritative; the index
    beats baseline TIFF tags (a Phenix TIFF's resolution tag is the camera's pixel, not the sample's)."""
    merged = table.merge(instrument, on="file_name", how="left", suffixes=("", "_instrument"))
    for column in instrument.columns.drop("file_name"):
        from_instrument = merged.pop(f"{column}_instrument")
        merged[column] = merged[column].where(merged["is_ome"], from_instrument).combine_first(merged[column])
    return merged


def _check_complete_sites(table: pd.DataFrame, where: Path) -> None:
    """Every site must have the same set of channels; a missing channel is named with its well/site."""
    channels_by_site: dict[tuple[str, int], set[str]] = defaultdict(set)
    for well, site, channel in table[["Metadata_Well", "Metadata_Site", "Metadata_Channel"]].itertuples(index=False):
        channels_by_site[(well, site)].add(channel)
    all_channels = set(table["Metadata_Channel"])
    incomplete = {k: sorted(all_channels - v) for k, v in channels_by_site.items() if v != all_channels}
    if incomplete:
        listed = [f"{w} site {s} lacks {missing}" for (w, s), missing in sorted(incomplete.items())[:10]]
        raise MdpError(f"incomplete sites: {'; '.join(listed)}", path=where)
    duplicated = table.duplicated(["Metadata_Well", "Metadata_Site", "Metadata_Channel", "Metadata_Z", "Metadata_T"])
    if duplicated.any():
        names = table.loc[duplicated, "file_name"].tolist()[:10]
        raise MdpError(f"more than one image for the same well/site/channel: {names}", path=where)


def site_images(raw_images: pd.DataFrame) -> dict[tuple[str, int], dict[str, Path]]:
    """(well, site) -> {channel: local path} for the first z/t plane of every site."""
    sites: dict[tuple[str, int], dict[str, Path]] = defaultdict(dict)
    ordered = raw_images.sort_values(["Metadata_Z", "Metadata_T"], na_position="first")
    for row in ordered.itertuples(index=False):
        channels = sites[(row.Metadata_Well, int(row.Metadata_Site))]
        channels.setdefault(row.Metadata_Channel, uri_to_path(row.uri))
    return dict(sorted(sites.items()))


def uri_to_path(uri: str) -> Path:
    if not uri.startswith("file://"):
        raise MdpError(f"only file:// image URIs can be read by the built-in engine, got {uri!r}")
    return Path(unquote(urlparse(uri).path))


def site_acquisition_metadata(raw_images: pd.DataFrame) -> pd.DataFrame:
    """One row per (well, site) with the acquisition metadata shared by its images."""
    keys = ["Metadata_Well", "Metadata_Site"]
    # Exposure differs per channel, so it stays with the images; the rest describe the whole site.
    present = [c for c in ACQUISITION_COLUMNS if c in raw_images.columns and c != "Metadata_ExposureTime_ms"]
    grouped = raw_images.groupby(keys, sort=True)
    summary = grouped[present].first()
    if "Metadata_AcquisitionTime" in present:
        # When the site began; images without a time are ignored (some formats record it on one channel only).
        summary["Metadata_AcquisitionTime"] = grouped["Metadata_AcquisitionTime"].agg(
            lambda times: min((t for t in times if isinstance(t, str)), default=None))
    return summary.reset_index()


def plate_fingerprint(plate: PlateFolder) -> str:
    """A cheap fingerprint of a plate folder (manifest, platemap, and every image's name, size and
    modification time): equal fingerprints mean the inventory need not be taken again."""
    parts = [(plate.root / MANIFEST_NAME).read_text(encoding="utf-8-sig")]
    if plate.platemap_path.exists():
        parts.append(plate.platemap_path.read_text(encoding="utf-8-sig"))
    for path in sorted(plate.images_dir.iterdir()):
        if path.is_file() and looks_like_image(path.name):
            status = path.stat()
            parts.append(f"{path.name} {status.st_size} {status.st_mtime_ns}")
    return sha256_text("\n".join(parts))
