"""Pictures for the Dagster UI: a plate map (wells in plate layout, coloured by a per-well figure, negative
controls marked) and the illumination functions of a plate, one image per channel.

Each function returns PNG bytes; `markdown_image` embeds them in markdown metadata as a data URI, which the
UI renders on the asset's page. Drawing uses matplotlib's object-oriented API (no pyplot: no global state,
no display backend), so it is safe in any run worker.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image

# Screening plate formats by the number of wells they hold: rows, columns.
PLATE_FORMATS = ((96, (8, 12)), (384, (16, 24)), (1536, (32, 48)))
_WELL = re.compile(r"^([A-Za-z]{1,2})(\d{1,2})$")


def well_position(well: str) -> tuple[int, int]:
    """'B03' -> (1, 2): zero-based row and column; rows A..Z then AA..AF as 1536-well plates name them."""
    match = _WELL.match(well.strip())
    if match is None:
        raise ValueError(f"not a well name: {well!r} (expected a row letter and a column number, e.g. B03)")
    letters, column = match.group(1).upper(), int(match.group(2))
    row = ord(letters[-1]) - ord("A") + (26 if len(letters) == 2 else 0)
    return row, column - 1


def plate_shape(wells: list[str]) -> tuple[int, int]:
    """The smallest standard plate format holding every well (rows, columns)."""
    positions = [well_position(w) for w in wells]
    rows = max((r for r, _ in positions), default=0) + 1
    columns = max((c for _, c in positions), default=0) + 1
    for _, (format_rows, format_columns) in PLATE_FORMATS:
        if rows <= format_rows and columns <= format_columns:
            return format_rows, format_columns
    return rows, columns


def row_name(row: int) -> str:
    return chr(ord("A") + row) if row < 26 else "A" + chr(ord("A") + row - 26)


def plate_map(values: Mapping[str, float], title: str, label: str, controls: set[str] = frozenset(),
              vmin: float | None = None, vmax: float | None = None) -> bytes:
    """A PNG of the plate: every well at its position, coloured by `values` (wells without a value grey),
    negative-control wells outlined in black and listed in the legend."""
    shape = plate_shape(list(values) + list(controls))
    grid = np.full(shape, np.nan)
    for well, value in values.items():
        row, column = well_position(well)
        grid[row, column] = np.nan if value is None else float(value)
    figure = Figure(figsize=(max(5.0, shape[1] * 0.45 + 2.2), max(3.0, shape[0] * 0.45 + 1.4)))
    axes = figure.add_subplot()
    colours = axes.imshow(np.ma.masked_invalid(grid), cmap=colormaps["viridis"].with_extremes(bad="#dddddd"),
                          vmin=vmin, vmax=vmax, aspect="equal", interpolation="nearest")
    for well in controls:
        row, column = well_position(well)
        axes.add_patch(_control_box(row, column))
    if shape[0] * shape[1] <= 96:  # small plates: the figure in every well
        for row, column in zip(*np.nonzero(~np.isnan(grid))):
            value = grid[row, column]
            shade = colours.norm(value)
            axes.text(column, row, _short(value), ha="center", va="center", fontsize=7,
                      color="black" if np.ma.getdata(shade) > 0.6 else "white")
    axes.set_xticks(range(shape[1]), [str(c + 1) for c in range(shape[1])], fontsize=7)
    axes.set_yticks(range(shape[0]), [row_name(r) for r in range(shape[0])], fontsize=7)
    axes.tick_params(length=0, labeltop=True, labelbottom=False)
    axes.set_title(title, fontsize=10)
    figure.colorbar(colours, ax=axes, label=label, shrink=0.8)
    if controls:
        axes.legend(handles=[_control_box(0, 0, label=f"negative control ({len(controls)} wells)")],
                    loc="upper center", bbox_to_anchor=(0.5, -0.02), fontsize=7, frameon=False)
    return _png(figure)


def illumination_images(functions: Mapping[str, np.ndarray], title: str) -> bytes:
    """A PNG with one panel per channel: the illumination function, each on its own colour scale."""
    channels = sorted(functions)
    columns = min(len(channels), 5) or 1
    rows = max(1, math.ceil(len(channels) / columns))
    figure = Figure(figsize=(3.0 * columns, 2.9 * rows + 0.4))
    for index, channel in enumerate(channels):
        axes = figure.add_subplot(rows, columns, index + 1)
        image = np.asarray(functions[channel], dtype=float)
        shown = axes.imshow(image, cmap="magma")
        axes.set_title(f"{channel}  ({image.min():.2f} to {image.max():.2f})", fontsize=8)
        axes.set_axis_off()
        figure.colorbar(shown, ax=axes, shrink=0.75)
    figure.suptitle(title, fontsize=10)
    return _png(figure)


# The UI shows markdown metadata in place only when it is shorter than this; longer goes behind "[Show Markdown]".
INLINE_MARKDOWN_CHARS = 1000

def plate_thumbnail(values: Mapping[str, float | None], controls: set[str] = frozenset(),
                    vmin: float | None = None, vmax: float | None = None, budget: int = 700) -> bytes | None:
    """A small palette PNG of the plate, wells as flat squares in viridis, negative controls outlined in black,
    wells without a value grey: small enough (base64 under `budget` characters) for the UI to show it in
    place. The largest wells and finest colour steps that fit; None when nothing fits (a dense 1536-well plate)."""
    shape = plate_shape(list(values) + list(controls))
    known = [float(v) for v in values.values() if v is not None and not math.isnan(float(v))]
    low = vmin if vmin is not None else min(known, default=0.0)
    high = vmax if vmax is not None else max(known, default=1.0)
    shares = np.full(shape, np.nan)
    for well, value in values.items():
        if value is not None and not math.isnan(float(value)):
            shares[well_position(well)] = min(max((float(value) - low) / ((high - low) or 1.0), 0.0), 1.0)
    for steps in (32, 16, 8):
        for cell in (16, 12, 9, 6, 4):
            png = _thumbnail_png(shares, controls, steps, cell)
            if len(base64.b64encode(png)) <= budget:
                return png
    return None


def _thumbnail_png(shares: np.ndarray, controls: set[str], steps: int, cell: int) -> bytes:
    black, grey, white = steps, steps + 1, steps + 2  # palette: viridis steps, then these
    levels = np.where(np.isnan(shares), grey, np.round(np.nan_to_num(shares) * (steps - 1))).astype(np.uint8)
    pixels = np.repeat(np.repeat(levels, cell, axis=0), cell, axis=1)
    pixels[::cell, :] = white
    pixels[:, ::cell] = white
    for well in controls:
        row, column = well_position(well)
        y, x = row * cell, column * cell
        pixels[y + 1:y + cell, [x + 1, x + cell - 1]] = black
        pixels[[y + 1, y + cell - 1], x + 1:x + cell] = black
    palette = [round(255 * c) for i in range(steps) for c in colormaps["viridis"](i / (steps - 1))[:3]]
    image = Image.fromarray(pixels, mode="P")
    image.putpalette(palette + [0, 0, 0, 221, 221, 221, 255, 255, 255])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def inline_plate_map(values: Mapping[str, float | None], what: str, controls: set[str] = frozenset(),
                     vmin: float | None = None, vmax: float | None = None) -> str:
    """Markdown the UI shows in place: the plate thumbnail and one line saying what the colours mean."""
    known = [float(v) for v in values.values() if v is not None and not math.isnan(float(v))]
    low = vmin if vmin is not None else min(known, default=0.0)
    high = vmax if vmax is not None else max(known, default=1.0)
    legend = f"{what}: {_short(low)} (dark) to {_short(high)} (yellow)" + \
        ("; outlined: negative controls" if controls else "") + "; grey: no value"
    png = plate_thumbnail(values, controls, low, high, budget=INLINE_MARKDOWN_CHARS - len(legend) - 60)
    return (markdown_image(png, what) + "  \n" if png is not None else "") + legend


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown the Dagster UI renders as the image itself (a base64 PNG data URI)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def _control_box(row: int, column: int, label: str | None = None) -> Rectangle:
    return Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2.0, label=label)


def _short(value: float) -> str:
    if value == int(value) and abs(value) < 10_000:
        return str(int(value))
    return f"{value:.2f}" if abs(value) < 10 else f"{value:.0f}"


def _png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


# -- the pictures of each level, from what the level made ---------------------------------------------------
@dataclass(frozen=True)
class PlateMap:
    """A per-well figure of one plate, as the UI shows it: in place (`inline`, markdown under the UI's limit)
    and as the full labelled figure (`figure`, a PNG)."""

    inline: str
    figure: bytes
    title: str


def _plate_map(values: Mapping[str, float | None], title: str, what: str, controls: set[str],
               vmin: float | None = None, vmax: float | None = None) -> PlateMap:
    return PlateMap(inline_plate_map(values, what, controls, vmin, vmax),
                    plate_map(values, title, what, controls, vmin, vmax), title)


def qc_plate_map(image_qc: pd.DataFrame, barcode: str, controls: set[str]) -> PlateMap:
    """Image QC: per well, the share of its images that pass (focus and saturation)."""
    by_well = image_qc.groupby("Metadata_Well")["qc_pass"].mean()
    return _plate_map(by_well.to_dict(), f"{barcode}: QC pass fraction per well", "images passing QC",
                      controls, vmin=0.0, vmax=1.0)


def cell_count_plate_map(sites: pd.DataFrame, wells: set[str], barcode: str, controls: set[str]) -> PlateMap:
    """Segmentation: nuclei found per well, over its QC-passing sites (grey: no usable site)."""
    counts = sites.groupby("Metadata_Well")["Count_Nuclei"].sum() if len(sites) else {}
    values = {well: (float(counts[well]) if well in counts else None) for well in wells}
    return _plate_map(values, f"{barcode}: cells (nuclei) per well", "cells per well", controls, vmin=0.0)


def feature_plate_map(wells: pd.DataFrame, feature: str, barcode: str, controls: set[str]) -> PlateMap:
    """Any feature a lab chooses: its per-well value (a row per well, Metadata_Well) in plate layout."""
    values = {w: (None if pd.isna(v) else float(v)) for w, v in zip(wells["Metadata_Well"], wells[feature])}
    return _plate_map(values, f"{barcode}: {feature} per well", feature, controls)


def illumination_figure(folder: Path, barcode: str) -> bytes:
    """The illumination functions stored as <channel>.npy in `folder`, one panel per channel."""
    functions = {path.stem: np.load(path) for path in sorted(folder.glob("*.npy"))}
    return illumination_images(functions, f"{barcode}: illumination functions (divide the image by these)")


def map_per_treatment(per_treatment: pd.DataFrame, treatment_column: str, threshold: float, title: str) -> bytes:
    """Each treatment's mAP against its corrected p-value (-log10), the significance level as a line: what a
    lab reads to see which treatments its profiles retrieve."""
    figure = Figure(figsize=(5.2, 3.6), dpi=100)
    axes = figure.add_subplot()
    p_values = per_treatment["corrected_p_value"].clip(lower=1e-12).to_numpy(dtype=float)
    maps = per_treatment["mean_average_precision"].to_numpy(dtype=float)
    retrieved = per_treatment["below_corrected_p"].to_numpy(dtype=bool)
    axes.scatter(maps[~retrieved], -np.log10(p_values[~retrieved]), color="#999999", label="not retrieved")
    axes.scatter(maps[retrieved], -np.log10(p_values[retrieved]), color="#1f77b4", label="retrieved")
    for name, x, y in zip(per_treatment[treatment_column], maps, -np.log10(p_values)):
        axes.annotate(str(name), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    axes.axhline(-math.log10(threshold), color="#d62728", linestyle="--", linewidth=1,
                 label=f"corrected p = {threshold:g}")
    axes.set_xlim(-0.02, 1.05)
    axes.set_xlabel("mean average precision (mAP)")
    axes.set_ylabel("-log10 corrected p")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, loc="lower right")
    return _png(figure)


def crop_montage(flagged: np.ndarray, kept: np.ndarray, channel: str, title: str) -> bytes:
    """Two rows of single-cell crops of one channel (N, size, size each): cells QC flagged above, cells kept
    below, each crop scaled to its own 1st-99th percentile so dim and bright cells both show."""
    columns = max(len(flagged), len(kept), 1)
    figure = Figure(figsize=(1.1 * columns + 0.8, 2.6), dpi=100)
    figure.suptitle(title, fontsize=9)
    for row, (crops, label) in enumerate(((flagged, "flagged"), (kept, "kept"))):
        for column in range(columns):
            axes = figure.add_subplot(2, columns, row * columns + column + 1)
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(label, fontsize=8)
            if column < len(crops):
                crop = crops[column]
                low, high = np.percentile(crop, [1, 99]) if crop.size else (0.0, 1.0)
                axes.imshow(np.clip((crop - low) / (high - low or 1.0), 0, 1), cmap="gray")
            else:
                axes.set_frame_on(False)
    figure.text(0.01, 0.01, channel, fontsize=7)
    return _png(figure)


def embedding_scatter(embedding: pd.DataFrame, colour_by: str, title: str) -> bytes:
    """Wells on their first two principal components, coloured by treatment: do replicates sit together and
    away from the controls?"""
    figure = Figure(figsize=(5.2, 3.8), dpi=100)
    axes = figure.add_subplot()
    palette = colormaps["tab10"]
    groups = embedding[colour_by].fillna("(none)").astype(str)
    for index, name in enumerate(sorted(groups.unique())):
        chosen = groups == name
        axes.scatter(embedding.loc[chosen, "Embedding_PC1"], embedding.loc[chosen, "Embedding_PC2"],
                     color=palette(index % 10), label=name, s=28)
    axes.set_xlabel("PC1")
    axes.set_ylabel("PC2")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, loc="best")
    return _png(figure)


def replicate_correlation(correlations: pd.Series, title: str) -> bytes:
    """Median Pearson correlation between a treatment's replicate well profiles, one bar per treatment."""
    figure = Figure(figsize=(5.2, 0.35 * len(correlations) + 1.4), dpi=100)
    axes = figure.add_subplot()
    axes.barh([str(i) for i in correlations.index], correlations.to_numpy(dtype=float), color="#1f77b4")
    axes.axvline(0, color="#333333", linewidth=0.8)
    axes.set_xlim(-1, 1)
    axes.set_xlabel("median replicate correlation (Pearson)")
    axes.set_title(title, fontsize=10)
    return _png(figure)


def segmentation_thumbnails(panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], title: str) -> bytes:
    """A few sites of a plate, each its nuclei image with the nuclei (yellow) and cells (cyan) outlined:
    (label, image, nuclei labels, cell labels) per panel. Outlines are where a label changes."""
    columns = max(1, min(len(panels), 4))
    rows = math.ceil(len(panels) / columns) if panels else 1
    figure = Figure(figsize=(2.4 * columns, 2.5 * rows + 0.3), dpi=72)  # a page-sized picture, not a print
    figure.suptitle(title, fontsize=9)
    for index, (label, image, nuclei, cells) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.set_xticks([])
        axes.set_yticks([])
        low, high = np.percentile(image, [1, 99.5])
        grey = np.clip((image - low) / (high - low or 1.0), 0, 1)
        rgb = np.dstack([grey, grey, grey])
        rgb[_outline(cells)] = (0.0, 0.9, 0.9)
        rgb[_outline(nuclei)] = (1.0, 0.85, 0.0)
        axes.imshow(rgb)
        axes.set_title(label, fontsize=8)
    return _png(figure)


def _outline(labels: np.ndarray) -> np.ndarray:
    """Pixels on the edge of a labelled object: a neighbour (right or below) carries another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge & ((labels > 0) | np.roll(labels > 0, 1, axis=1) | np.roll(labels > 0, 1, axis=0))
