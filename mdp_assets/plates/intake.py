"""Deciding when a plate folder in the landing zone is ready, and whether it is fit to register.

Instruments write plates for hours, so a plate is ready only when its manifest exists, every expected
image is present, and nothing has changed for a quiet period. A plate that is complete but broken (bad
manifest, unsafe id, unreadable or truncated TIFFs, names outside the naming scheme, missing channels)
is rejected with a reason naming each bad file. Nothing here writes to the landing zone.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from mdp_assets.errors import MdpError
from mdp_assets.checksums import sha256_text
from mdp_assets.plates.contents import contents_from_names, links_leaving, missing_images
from mdp_assets.plates.harmony import INDEX_FILE_NAMES
from mdp_assets.plates.manifest import MANIFEST_NAME, load_manifest
from mdp_assets.plates.naming import NamingScheme, looks_like_image
from mdp_assets.plates.tiff_metadata import read_tiff_info

_SAFE_FOLDER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_LISTED = 20

Status = Literal["ready", "waiting", "incomplete", "rejected", "registered", "changed"]


@dataclass(frozen=True)
class FolderSnapshot:
    """What a plate folder looks like now: file name -> (bytes, mtime in ns), read with one scandir."""

    name: str
    path: Path
    files: dict[str, tuple[int, int]]

    @property
    def fingerprint(self) -> str:
        return sha256_text("\n".join(f"{n} {s} {m}" for n, (s, m) in sorted(self.files.items())))

    @property
    def newest_mtime_s(self) -> float:
        return max((m for _, m in self.files.values()), default=0) / 1e9

    def image_names(self, images_subdir: str = ".") -> list[str]:
        prefix = "" if images_subdir in (".", "") else images_subdir.rstrip("/") + "/"
        return sorted(n[len(prefix):] for n in self.files if n.startswith(prefix) and "/" not in n[len(prefix):]
                      and looks_like_image(n[len(prefix):]))


def _scan(folder: Path, prefix: str = "") -> dict[str, tuple[int, int]]:
    files: dict[str, tuple[int, int]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue  # partial copies (rsync, our own atomic writes) are not the plate yet
            if entry.is_dir(follow_symlinks=False):
                files.update(_scan(Path(entry.path), f"{prefix}{entry.name}/"))
            elif entry.is_file():
                stat = entry.stat()
                files[f"{prefix}{entry.name}"] = (stat.st_size, stat.st_mtime_ns)
    return files


def snapshot_landing_zone(root: Path) -> list[FolderSnapshot]:
    if not root.is_dir():
        return []
    snapshots = []
    with os.scandir(root) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                snapshots.append(FolderSnapshot(entry.name, Path(entry.path), _scan(Path(entry.path))))
    return snapshots


@dataclass(frozen=True)
class Decision:
    plate: str
    status: Status
    reason: str
    fingerprint: str
    files_read: bool = False  # whether judging it meant reading every image header


def _validate_files(snapshot: FolderSnapshot, scheme: NamingScheme, images: list[str], images_dir: Path) -> list[str]:
    problems = [f"{n}: does not match naming scheme {scheme.name!r}" for n in images if scheme.parse(n) is None]
    channels_by_site: dict[tuple[str, int], set[str]] = {}
    for name in images:
        parsed = scheme.parse(name)
        if parsed is not None:
            channels_by_site.setdefault((parsed.well, parsed.site), set()).add(parsed.channel_token)
    tokens = set().union(*channels_by_site.values()) if channels_by_site else set()
    for (well, site), present in sorted(channels_by_site.items()):
        if present != tokens:
            problems.append(f"{well} site {site}: missing channel(s) {sorted(tokens - present)}")
    for name in images:
        try:
            read_tiff_info(images_dir / name)
        except MdpError as exc:
            problems.append(f"{name}: {str(exc).split(': ', 1)[-1]}")
    return problems


Fetch = Callable[[FolderSnapshot, Iterable[str]], Path]


def _local(snapshot: FolderSnapshot, relpaths: Iterable[str]) -> Path:
    return snapshot.path


def assess_plate(
    snapshot: FolderSnapshot, now_s: float, quiet_period_s: float, may_read_files: bool = True, fetch: Fetch = _local,
    incomplete_after_s: float | None = None,
) -> Decision:
    """Is this folder a plate ready to register, still arriving, stuck incomplete, or unfit? (never registered)

    Reading every TIFF header is the expensive part; with `may_read_files` False a plate that is otherwise
    ready waits for a later tick. `fetch` makes listed files local (a landing zone on S3 mirrors them).
    A plate short of its expected images with nothing new for `incomplete_after_s` is reported incomplete,
    with what it lacks, instead of waiting without a word."""
    fingerprint = snapshot.fingerprint

    def decide(status: Status, reason: str, files_read: bool = False) -> Decision:
        return Decision(snapshot.name, status, reason, fingerprint, files_read)

    if not _SAFE_FOLDER.match(snapshot.name):
        return decide("rejected", f"unsafe plate id {snapshot.name!r}: use letters, digits, '.', '_' or '-'")
    if MANIFEST_NAME not in snapshot.files:
        return decide("waiting", f"no {MANIFEST_NAME} yet")
    try:
        manifest = load_manifest(fetch(snapshot, [MANIFEST_NAME]) / MANIFEST_NAME)
    except MdpError as exc:
        return decide("rejected", str(exc))
    if manifest.barcode != snapshot.name:
        return decide("rejected", f"manifest barcode {manifest.barcode!r} differs from the folder name")
    leaving = links_leaving(snapshot.path, [manifest.platemap, manifest.images_subdir])
    if leaving:  # checked before counting: a linked images folder would otherwise look empty forever
        return decide("rejected", f"links that lead outside the plate folder: {leaving}; mdp reads a plate only "
                      "from inside its folder")
    images = snapshot.image_names(manifest.images_subdir)
    if len(images) < manifest.expected_image_count:
        stalled_for = now_s - snapshot.newest_mtime_s
        if incomplete_after_s is not None and stalled_for >= incomplete_after_s:
            since = datetime.fromtimestamp(snapshot.newest_mtime_s, timezone.utc).isoformat(timespec="seconds")
            scheme = NamingScheme(manifest.naming_scheme, manifest.naming_pattern, manifest.channels)
            prefix = "" if manifest.images_subdir in (".", "") else manifest.images_subdir.rstrip("/") + "/"
            index = next((prefix + n for n in INDEX_FILE_NAMES if prefix + n in snapshot.files), None)
            index_path = fetch(snapshot, [index]) / index if index else None
            missing = missing_images(contents_from_names(images, scheme, index_path))
            listed = ", ".join(missing[:MAX_LISTED]) + (f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else "")
            return decide("incomplete", f"incomplete since {since}: {len(images)} of {manifest.expected_image_count} "
                          f"images, missing: {listed or 'whole wells (none of their images arrived)'}; "
                          f"`mdp register {snapshot.name} --allow-incomplete` takes it as it is")
        return decide("waiting", f"{len(images)} of {manifest.expected_image_count} images so far")
    if len(images) > manifest.expected_image_count:
        return decide("rejected", f"{len(images)} images but the manifest expects {manifest.expected_image_count}")
    if manifest.platemap not in snapshot.files:
        return decide("waiting", f"platemap {manifest.platemap} not there yet")
    quiet_for = now_s - snapshot.newest_mtime_s
    if quiet_for < quiet_period_s:
        return decide("waiting", f"files changed {quiet_for:.0f} s ago (quiet period {quiet_period_s:.0f} s)")
    if not may_read_files:
        return decide("waiting", "complete; queued for validation (this tick's validation budget is used)")
    scheme = NamingScheme(manifest.naming_scheme, manifest.naming_pattern, manifest.channels)
    prefix = "" if manifest.images_subdir in (".", "") else manifest.images_subdir.rstrip("/") + "/"
    folder = fetch(snapshot, [manifest.platemap, *(prefix + name for name in images)])
    leaving = links_leaving(folder, [manifest.platemap, manifest.images_subdir, *(prefix + n for n in images)])
    if leaving:
        return decide("rejected", f"links that lead outside the plate folder: {leaving[:MAX_LISTED]}; mdp reads a "
                      "plate only from inside its folder", files_read=True)
    problems = _validate_files(snapshot, scheme, images, folder / manifest.images_subdir)
    if problems:
        listed = "; ".join(problems[:MAX_LISTED]) + (f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else "")
        return decide("rejected", f"{len(problems)} problem(s): {listed}", files_read=True)
    return decide("ready", f"{len(images)} images, quiet for {quiet_for:.0f} s", files_read=True)


@dataclass
class IntakeCursor:
    """What the sensor remembers between ticks: plates registered or rejected, with the fingerprint judged."""

    registered: dict[str, str] = field(default_factory=dict)  # plate -> fingerprint at registration
    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)  # plate -> (fingerprint, reason)
    changed_reported: dict[str, str] = field(default_factory=dict)  # plate -> fingerprint already reported

    @classmethod
    def load(cls, text: str | None) -> IntakeCursor:
        if not text:
            return cls()
        data = json.loads(text)
        data["rejected"] = {k: tuple(v) for k, v in data.get("rejected", {}).items()}
        return cls(**data)

    def dump(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def evaluate_landing_zone(
    snapshots: list[FolderSnapshot],
    cursor: IntakeCursor,
    now_s: float,
    quiet_period_s: float,
    known_partitions: set[str] = frozenset(),  # type: ignore[assignment]
    max_plates_validated: int = 25,
    fetch: Fetch = _local,
    incomplete_after_s: float | None = None,
) -> list[Decision]:
    """One decision per folder; updates the cursor for plates it registers, rejects or reports.

    Plates already in `known_partitions` (registered by `mdp demo` or by hand) count as registered now.
    At most `max_plates_validated` plates have their files read per call, so a tick stays short when
    hundreds of plates arrive at once; the rest are judged on later ticks."""
    decisions = []
    validated = 0
    for snapshot in snapshots:
        name, fingerprint = snapshot.name, snapshot.fingerprint
        if name in known_partitions and name not in cursor.registered:
            cursor.registered[name] = fingerprint
        if name in cursor.registered:
            if fingerprint == cursor.registered[name]:
                decisions.append(Decision(name, "registered", "unchanged since registration", fingerprint))
            else:
                # Registered data changed under us: say so, never reprocess silently.
                decisions.append(Decision(name, "changed", "files changed after registration; not reprocessed "
                                          "(re-materialize the plate deliberately if the change is wanted)", fingerprint))
            continue
        judged = cursor.rejected.get(name)
        if judged and judged[0] == fingerprint:
            # Already judged and unchanged: report it again without reading its files again.
            decisions.append(Decision(name, "rejected", judged[1], fingerprint))
            continue
        decision = assess_plate(snapshot, now_s, quiet_period_s, validated < max_plates_validated, fetch,
                                incomplete_after_s)
        validated += decision.files_read
        if decision.status == "ready":
            cursor.registered[name] = fingerprint
            cursor.rejected.pop(name, None)
        elif decision.status == "rejected":
            cursor.rejected[name] = (fingerprint, decision.reason)
        decisions.append(decision)
    return decisions
