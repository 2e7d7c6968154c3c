import numpy as np
import pytest
from scipy import ndimage

from mdp_assets.science.image_qc import QcThresholds, percent_maximal, power_log_log_slope
from mdp_assets.plates.tiff_metadata import read_plane
from mdp_assets_tests.conftest import NF1_IMAGES, REALDATA

EXAMPLE_HUMAN = REALDATA / "cellprofiler-examplehuman" / "ExampleHuman" / "images"


@pytest.mark.parametrize("name", ["B7_01_1_3_DAPI_001.tif", "D6_01_2_2_GFP_001.tif", "H12_01_3_1_RFP_001.tif"])
def test_blur_lowers_the_power_log_log_slope_of_real_images(name):
    image = read_plane(NF1_IMAGES / name).astype(float)
    sharp = power_log_log_slope(image)
    blurred = power_log_log_slope(ndimage.gaussian_filter(image, 4))
    assert blurred < sharp - 0.5
    thresholds = QcThresholds(min_power_log_log_slope=-2.5)
    assert thresholds.passes(sharp, percent_maximal(image))
    assert not thresholds.passes(blurred, percent_maximal(image))


def test_slope_is_intensity_invariant():
    image = read_plane(EXAMPLE_HUMAN / "AS_09125_050116030001_D03f00d0.tif").astype(float)
    assert power_log_log_slope(image) == pytest.approx(power_log_log_slope(image * 7.5 + 3), rel=1e-9)


def test_flat_image_has_zero_slope_and_full_saturation():
    flat = np.full((64, 64), 100, dtype=np.uint16)
    assert power_log_log_slope(flat) == 0.0
    assert percent_maximal(flat) == 100.0


def test_percent_maximal_counts_pixels_at_the_image_maximum():
    image = np.zeros((10, 10), dtype=np.uint16)
    image[0, :3] = 500
    assert percent_maximal(image) == pytest.approx(3.0)
