"""What the levels below will need of a plate, checked before it is registered.

A plate that cannot get through (images of wells the platemap does not list, platemap wells never imaged,
fewer or more images than the manifest says, a nuclei or cell channel the plate does not have) is refused
here with the file and the field to change, instead of failing hours later or waiting forever.
Only file names, the instrument's index and one header per channel are read: cheap on a 17,000-image plate.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mdp_assets.errors import MdpError
from mdp_assets.plates.harmony import find_index_file, read_harmony_index
from mdp_assets.plates.inventory import PlateFolder, instrument_channel_names
from mdp_assets.plates.manifest import MANIFEST_NAME
from mdp_assets.plates.naming import ImageName, NamingScheme, channel_identifier, looks_like_image
from mdp_assets.plates.tiff_metadata import read_tiff_info

MAX_LISTED = 20


@dataclass(frozen=True)
class PlateContents:
    """The plate as its file names (and instrument index) describe it."""

    images: dict[str, ImageName]  # file name -> what its name says
    channels: dict[str, str]  # file-name channel token -> channel name, as the levels will call it
    # Images the instrument's index lists that are not in the folder (an index names every image taken).
    not_arrived: tuple[ImageName, ...] = ()

    @property
    def wells(self) -> set[str]:
        return {name.well for name in self.images.values()}


def links_leaving(root: Path, relpaths: list[str]) -> list[str]:
    """Which of these paths inside a plate folder resolve outside it (a symlink to /etc/passwd, an images
    folder linked to another plate): mdp reads nothing through them."""
    base = root.resolve()
    leaving = []
    for relpath in relpaths:
        target = (root / relpath).resolve()
        if target != base and base not in target.parents:
            leaving.append(relpath)
    return leaving


def check_inside_plate_folder(folder: PlateFolder) -> None:
    """The platemap, the images folder and every image must be inside the plate folder, links included."""
    images = folder.manifest.images_subdir
    named = [folder.manifest.platemap, images]
    if folder.images_dir.is_dir() and not links_leaving(folder.root, [images]):
        named += [f"{images}/{p.name}" for p in folder.images_dir.iterdir() if looks_like_image(p.name)]
    leaving = links_leaving(folder.root, named)
    if leaving:
        raise MdpError(f"links that lead outside the plate folder: {_listed(leaving)}; mdp reads a plate only from "
                       "inside its folder (copy the files in instead)", path=folder.root)


def contents_from_names(names: list[str], scheme: NamingScheme, index: Path | None = None) -> PlateContents:
    """Contents from file names and the instrument's index if there is one (its channel names mapped by the
    scheme's names): what the intake sensor can see cheaply."""
    images = {name: parsed for name in names if (parsed := scheme.parse(name)) is not None}
    table = read_harmony_index(index)[1] if index is not None else None
    indexed = list(table["URL"]) if table is not None else []
    not_arrived = _not_arrived(indexed, images, scheme)
    channels = {p.channel_token: channel_identifier(p.channel) for p in (*images.values(), *not_arrived)}
    if table is not None:
        for file_name, name in zip(table["URL"], table["ChannelName"]):
            parsed = scheme.parse(file_name)
            if parsed is not None and not parsed.channel_is_named:
                channels[parsed.channel_token] = scheme.channel_names.get(name) or channel_identifier(name)
    return PlateContents(images, channels, not_arrived)


def _not_arrived(indexed: list[str], images: dict[str, ImageName], scheme: NamingScheme) -> tuple[ImageName, ...]:
    return tuple(parsed for name in indexed if name not in images and (parsed := scheme.parse(name)) is not None)


def _listed(items: list[str]) -> str:
    return ", ".join(items[:MAX_LISTED]) + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def read_contents(folder: PlateFolder) -> PlateContents:
    """Parse every image name and name every channel: the manifest's mapping of the file token, else the
    instrument's index (Harmony), else the image's own metadata (OME-XML or Harmony tag), mapped again by
    the manifest; a token nothing names is named by itself ('5' -> 'Ch5'), as the inventory does."""
    scheme = folder.naming_scheme()
    if not folder.images_dir.is_dir():
        raise MdpError("images folder not found (manifest field 'images_subdir')", path=folder.images_dir)
    images = {}
    for path in sorted(folder.images_dir.iterdir()):
        if path.is_file() and looks_like_image(path.name):
            parsed = scheme.parse(path.name)
            if parsed is None:
                raise MdpError(f"{path.name} does not match naming scheme {scheme.name!r} (manifest field "
                               "'naming_scheme')", path=folder.images_dir)
            images[path.name] = parsed
    instrument_names = instrument_channel_names(folder, list(images))
    channels: dict[str, str] = {}
    first_by_token = {}
    for file_name, parsed in images.items():
        first_by_token.setdefault(parsed.channel_token, (file_name, parsed))
    for token, (file_name, parsed) in sorted(first_by_token.items()):
        if parsed.channel_is_named:
            channels[token] = parsed.channel
            continue
        found = instrument_names.get(file_name)
        if found is None:
            info = read_tiff_info(folder.images_dir / file_name)
            found = info.channel_names[0] if len(info.channel_names) == 1 else None
        channels[token] = (folder.manifest.channels.get(found) or channel_identifier(found)) if found else \
            channel_identifier(token)
    index = find_index_file(folder.images_dir)
    indexed = list(read_harmony_index(index)[1]["URL"]) if index is not None else []
    not_arrived = _not_arrived(indexed, images, scheme)
    for file_name, name in instrument_names.items():
        parsed = scheme.parse(file_name)
        if parsed is not None and parsed.channel_token not in channels:  # a channel none of whose images arrived
            channels[parsed.channel_token] = (parsed.channel if parsed.channel_is_named else
                                              folder.manifest.channels.get(name) or channel_identifier(name))
    return PlateContents(images, channels, not_arrived)


def check_contents(folder: PlateFolder, platemap: pd.DataFrame, contents: PlateContents | None = None,
                   allow_incomplete: bool = False) -> PlateContents:
    """Refuse a plate the levels below cannot process; every problem is listed, with the file and field."""
    manifest = folder.manifest
    contents = contents or read_contents(folder)
    problems: list[str] = []
    found, expected = len(contents.images), manifest.expected_image_count
    if found != expected and not (allow_incomplete and found < expected):
        problems.append(f"{found} images but the manifest's expected_image_count is {expected}"
                        + (f"; missing: {_listed(missing_images(contents))}" if found < expected else "")
                        + ("" if found > expected else " (`mdp register --allow-incomplete` takes it as it is)"))
    if found == 0:
        raise MdpError("no images in the images folder (manifest field 'images_subdir')", path=folder.images_dir)
    mapped = set(platemap["Metadata_Well"])
    unmapped = sorted(contents.wells - mapped)
    if unmapped:
        problems.append(f"images of wells the platemap ({manifest.platemap}) does not list: {_listed(unmapped)}; "
                        "check the platemap's well column (manifest field 'platemap_well_column'), or add those "
                        "wells to the platemap (empty annotations are fine)")
    never_imaged = sorted(mapped - contents.wells)
    if never_imaged and manifest.imaged_wells == "all":
        problems.append(f"platemap wells with no images: {_listed(never_imaged)} (imaged_wells: all in "
                        f"{MANIFEST_NAME}; set imaged_wells: subset if only part of the plate was imaged)")
    names = sorted(set(contents.channels.values()))
    for field_name, channel in (("nuclei_channel", manifest.nuclei_channel), ("cell_channel", manifest.cell_channel)):
        if channel is not None and channel not in names:
            problems.append(f"{field_name} {channel!r} is not one of the plate's channels {names}; set "
                            f"{field_name}, or map a channel to {channel!r} under 'channels:' (file token or "
                            "instrument channel name: name)")
    if problems:
        raise MdpError(f"plate {manifest.barcode} cannot be registered: " + "; ".join(problems),
                       path=folder.root / MANIFEST_NAME)
    return contents


def missing_images(contents: PlateContents) -> list[str]:
    """Which images a plate still lacks: the files the instrument's index lists that are not there, or where
    there is no index, judged from what it has (every well as many sites as the best-imaged well, every site
    every channel; wells with no image at all are the platemap's to say)."""
    if contents.not_arrived:
        return [f"{n.well} site {n.site} {contents.channels.get(n.channel_token, n.channel)}"
                for n in sorted(contents.not_arrived, key=lambda n: (n.well, n.site, n.channel_token))]
    by_site: dict[tuple[str, int], set[str]] = defaultdict(set)
    for name in contents.images.values():
        by_site[(name.well, name.site)].add(name.channel_token)
    sites_per_well: dict[str, set[int]] = defaultdict(set)
    for well, site in by_site:
        sites_per_well[well].add(site)
    all_sites = set().union(*sites_per_well.values()) if sites_per_well else set()
    tokens = set(contents.channels)
    missing = []
    for well in sorted(sites_per_well):
        for site in sorted(all_sites):
            present = by_site.get((well, site), set())
            if not present:
                missing.append(f"{well} site {site} (every channel)")
            else:
                missing.extend(f"{well} site {site} {contents.channels[t]}" for t in sorted(tokens - present))
    return missing

