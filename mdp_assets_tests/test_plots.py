"""The pictures the UI shows: plate maps put each well where it is on the plate, in its colour, with the
negative controls outlined; the illumination figure has a panel per channel."""

import base64
import io

import numpy as np
import pytest
from matplotlib.image import imread

from mdp_assets.science.plots import (INLINE_MARKDOWN_CHARS, illumination_images, inline_plate_map, markdown_image,
                                      plate_map, plate_shape, plate_thumbnail, well_position)


def _pixels(png: bytes) -> np.ndarray:
    return imread(io.BytesIO(png), format="png")


def test_wells_map_to_plate_positions_and_formats():
    assert well_position("A01") == (0, 0) and well_position("P24") == (15, 23) and well_position("b3") == (1, 2)
    assert well_position("AF48") == (31, 47)
    assert plate_shape(["B02", "C03"]) == (8, 12)
    assert plate_shape(["B02", "I13"]) == (16, 24)
    with pytest.raises(ValueError, match="not a well name: 'X'"):
        well_position("X")


def test_a_plate_map_colours_each_well_by_its_value_and_marks_controls():
    low_high = plate_map({"A01": 0.0, "H12": 1.0}, "test", "fraction", controls={"A01"}, vmin=0, vmax=1)
    assert low_high.startswith(b"\x89PNG")
    image = _pixels(low_high)
    # viridis: the low well is dark purple, the high one yellow; an empty well grey.
    height, width = image.shape[:2]
    purple = (image[..., 0] > 0.2) & (image[..., 0] < 0.35) & (image[..., 1] < 0.1) & (image[..., 2] > 0.3)
    yellow = (image[..., 0] > 0.9) & (image[..., 1] > 0.85) & (image[..., 2] < 0.25)
    ys, xs = np.nonzero(purple[:, : int(width * 0.8)])  # left of the colour bar
    yy, xy = np.nonzero(yellow[:, : int(width * 0.8)])
    assert len(ys) > 50 and len(yy) > 50
    assert ys.mean() < yy.mean() and xs.mean() < xy.mean()  # A01 top left, H12 bottom right
    without_control = _pixels(plate_map({"A01": 0.0, "H12": 1.0}, "test", "fraction", vmin=0, vmax=1))
    black = lambda im: int(((im[..., :3].sum(axis=2)) < 0.15).sum())  # noqa: E731
    assert black(image) > black(without_control) + 40  # the control's outline


def test_illumination_images_and_markdown():
    functions = {"DNA": np.ones((32, 32)), "ER": np.linspace(1, 2, 32 * 32).reshape(32, 32)}
    png = illumination_images(functions, "plate")
    assert _pixels(png).shape[1] > _pixels(illumination_images({"DNA": functions["DNA"]}, "plate")).shape[1]
    text = markdown_image(png, "alt")
    assert text.startswith("![alt](data:image/png;base64,") and base64.b64decode(text.split(",", 1)[1][:-1]) == png


def test_a_plate_thumbnail_fits_in_place_and_keeps_the_layout():
    rng = np.random.default_rng(0)
    for rows, columns in (("ABCDEFGH", 12), ("ABCDEFGHIJKLMNOP", 24)):
        # Cell counts with an edge effect and noise, as plates have them.
        values = {f"{r}{c:02d}": float(round(30 - 1.5 * abs(i - len(rows) / 2) - abs(c - columns / 2) / 2
                                             + rng.normal(0, 3)))
                  for i, r in enumerate(rows) for c in range(1, columns + 1)}
        markdown = inline_plate_map(values, "cells per well", controls={"B02"})
        assert len(markdown) < INLINE_MARKDOWN_CHARS, (len(rows), len(markdown))  # the UI shows it in place
        png = base64.b64decode(markdown.split(",", 1)[1].split(")", 1)[0])
        image = _pixels(png)
        cell = image.shape[1] // columns
        assert image.shape[0] == len(rows) * cell  # one square per well, in plate layout
        # Each well's colour follows its value: the darkest well holds the smallest value.
        centres = {w: image[well_position(w)[0] * cell + cell // 2, well_position(w)[1] * cell + cell // 2, :3].sum()
                   for w in values}
        span = max(values.values()) - min(values.values())
        assert values[min(centres, key=centres.get)] - min(values.values()) <= span / 8
        assert max(values.values()) - values[max(centres, key=centres.get)] <= span / 8
    assert f"{min(values.values()):.0f} (dark) to {max(values.values()):.0f} (yellow)" in markdown
    assert "outlined: negative controls" in markdown
    dense = {f"{chr(65 + r % 26) if r < 26 else 'A' + chr(65 + r - 26)}{c:02d}": float(rng.random())
             for r in range(32) for c in range(1, 49)}
    assert plate_thumbnail(dense, budget=700) is None  # too big to show in place: the figure alone then
