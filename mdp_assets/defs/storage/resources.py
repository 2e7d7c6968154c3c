"""Where mdp keeps things: the data root (tiers, staging) and the landing zone for new plates."""


import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

from mdp_assets.errors import MdpError
from mdp_assets.lib.inventory import PlateFolder


class MdpStorage(dg.ConfigurableResource):
    """The local data root: tiers live in `<data_root>/<tier>`, plates arrive in the landing zone."""

    data_root: str = Field(description="folder holding every tier and the staging area")
    landing_zone: str | None = Field(
        default=None, description="folder of incoming plate folders; default <data_root>/landing"
    )

    @property
    def root(self) -> Path:
        return Path(self.data_root).expanduser().resolve()

    @property
    def landing_path(self) -> Path:
        return Path(self.landing_zone).expanduser().resolve() if self.landing_zone else self.root / "landing"

    def tier_root(self, tier: str) -> Path:
        return self.root / tier

    def plate_folder(self, barcode: str) -> PlateFolder:
        folder = PlateFolder.open(self.landing_path / barcode)
        if folder.barcode != barcode:
            raise MdpError(
                f"manifest barcode {folder.barcode!r} does not match its folder name {barcode!r}",
                path=folder.root / "plate.yaml",
            )
        return folder

    @contextmanager
    def staging_dir(self, label: str) -> Iterator[Path]:
        """A fresh folder on the data root's filesystem for an asset to fill.

        On success the IO manager takes it over (moved into its tier in one rename); on error it is removed,
        so a failed step leaves nothing half-written behind.
        """
        path = self.root / ".staging" / f"{label}-{uuid.uuid4().hex[:12]}"
        path.mkdir(parents=True)
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
