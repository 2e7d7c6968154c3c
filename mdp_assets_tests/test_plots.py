"""The pictures the UI shows: plate maps put each well where it is on the plate, in its colour, with the
negative controls outlined; the illumination figure has a panel per channel."""

import base64
import io

import numpy as np
import pytest
from matplotlib.image import imread

from mdp_assets.science.plots import (illumination_images, markdown_image, plate_map, plate_shape,
                                      well_position)


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
