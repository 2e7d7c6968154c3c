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


def _measured(slopes, channel="DNA"):
    import pandas as pd

    return pd.DataFrame({"Metadata_Plate": "P", "Metadata_Well": [f"A{i + 1:02d}" for i in range(len(slopes))],
                         "Metadata_Site": 1, "Metadata_Channel": channel, "file_name": [f"f{i}" for i in range(len(slopes))],
                         "ImageQuality_PowerLogLogSlope": slopes, "ImageQuality_PercentMaximal": 0.001})


def test_an_instrument_whose_sharp_images_sit_at_minus_2_8_passes_by_default():
    from mdp_assets.science.image_qc import judge

    slopes = [-2.78, -2.81, -2.84, -2.79, -2.83, -2.80, -2.86, -3.6]
    judged = judge(_measured(slopes), QcThresholds())
    assert judged["qc_blurred"].tolist() == [False] * 7 + [True], "only the image far below its channel fails"
    absolute = judge(_measured(slopes), QcThresholds(focus_robust_z=None, min_power_log_log_slope=-2.5))
    assert absolute["qc_blurred"].all(), "the old absolute default failed the whole instrument"


def test_relative_rules_abstain_on_too_few_images():
    from mdp_assets.science.image_qc import judge

    assert not judge(_measured([-1.0, -2.9, -1.1]), QcThresholds())["qc_blurred"].any()


def test_a_blurred_real_image_stands_out_among_the_plate_s_sharp_ones():
    from mdp_assets.science.image_qc import judge

    names = sorted(p.name for p in NF1_IMAGES.glob("*_DAPI_*.tif"))
    slopes = [power_log_log_slope(read_plane(NF1_IMAGES / n).astype(float)) for n in names]
    slopes[2] = power_log_log_slope(ndimage.gaussian_filter(read_plane(NF1_IMAGES / names[2]).astype(float), 4))
    judged = judge(_measured(slopes), QcThresholds())
    assert judged["qc_blurred"].tolist() == [i == 2 for i in range(len(names))], judged["qc_focus_robust_z"].tolist()
