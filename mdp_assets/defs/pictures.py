"""Pictures as materialization metadata the Dagster UI renders (drawn by `mdp_assets.science.plots`)."""

from __future__ import annotations

import dagster as dg

from mdp_assets.science.plots import PlateMap, markdown_image


def plate_map_metadata(picture: PlateMap, name: str = "plate_map") -> dict[str, dg.MetadataValue]:
    """`<name>`, shown in place on the asset's page (a thumbnail and what its colours mean), and
    `<name>_figure`, the labelled figure behind its "[Show Markdown]"."""
    return {name: dg.MetadataValue.md(picture.inline),
            f"{name}_figure": dg.MetadataValue.md(markdown_image(picture.figure, picture.title))}


def figure_metadata(png: bytes, alt: str) -> dg.MarkdownMetadataValue:
    return dg.MetadataValue.md(markdown_image(png, alt))
