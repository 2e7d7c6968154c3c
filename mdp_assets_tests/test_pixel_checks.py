"""Pixel checks at intake, on the real NF1 plate's images (copied): float counts, mixed bit depths, RGB, NaN
and an odd-sized image are refused at registration naming the file; float intensities pass when declared."""

import numpy as np
import pytest
import tifffile
import yaml

from mdp_assets.errors import MdpError
from mdp_assets.services.registration import register_plate


def _images(storage, plate, channel):
    return sorted((storage.landing_path / plate).glob(f"*_{channel}_*.tif"))


def _declare(storage, plate, **fields):
    manifest = storage.landing_path / plate / "plate.yaml"
    manifest.write_text(yaml.safe_dump({**yaml.safe_load(manifest.read_text()), **fields}, sort_keys=False))


def _refused(storage, plate) -> str:
    with pytest.raises(MdpError) as error:
        register_plate(storage, plate)
    assert storage.registry().get(plate) is None, "nothing is registered"
    return str(error.value)


def test_a_float_image_of_raw_counts_is_refused_naming_it(storage, nf1_plate):
    victim = _images(storage, nf1_plate, "DAPI")[2]
    tifffile.imwrite(victim, tifffile.imread(victim).astype(np.float32))
    message = _refused(storage, nf1_plate)
    assert f"plate {nf1_plate} cannot be registered" in message
    assert f"{victim.name}: a float32 image; float images are refused unless the manifest says" in message
    assert f"{victim.name}: 904x1224 float32 (32-bit), while channel DAPI's other images are uint16 (16-bit)" in message
    # Declared as intensities, its pixels are read: counts up to thousands are not intensities.
    _declare(storage, nf1_plate, float_images="intensities")
    assert f"{victim.name}: float pixels from" in _refused(storage, nf1_plate)


def test_mixed_bit_depths_rgb_and_an_odd_size_are_refused_naming_each_file(storage, nf1_plate):
    eight_bit, rgb, small = _images(storage, nf1_plate, "GFP")[:3]
    pixels = tifffile.imread(eight_bit)
    tifffile.imwrite(eight_bit, (pixels >> 8).astype(np.uint8))
    tifffile.imwrite(rgb, np.stack([tifffile.imread(rgb)] * 3, axis=-1), photometric="rgb")
    tifffile.imwrite(small, tifffile.imread(small)[:512, :512])
    message = _refused(storage, nf1_plate)
    assert f"{eight_bit.name}: 904x1224 uint8 (8-bit), while channel GFP's other images are uint16 (16-bit)" in message
    assert f"{rgb.name}: an RGB image with 3 samples per pixel" in message
    assert f"{small.name}: 512x512 pixels, while the plate's images are 904x1224" in message


def test_float_intensities_pass_when_declared_and_nan_pixels_do_not(storage, nf1_plate):
    images = _images(storage, nf1_plate, "RFP")
    for path in images:
        tifffile.imwrite(path, tifffile.imread(path).astype(np.float32) / 65535)
    _declare(storage, nf1_plate, float_images="intensities")
    assert register_plate(storage, nf1_plate).barcode == nf1_plate
    storage.registry()._path(nf1_plate).unlink()
    broken = tifffile.imread(images[1])
    broken[10:20, 10:20] = np.nan
    tifffile.imwrite(images[1], broken)
    assert f"{images[1].name}: 100 NaN or infinite pixels" in _refused(storage, nf1_plate)


def test_an_unexpected_numpy_error_in_a_level_reaches_a_person_naming_plate_and_level(tmp_path, instance):
    import dagster as dg

    from mdp_assets.defs.plates.partitions import names_plate_and_level, plates_partitions

    @dg.asset(partitions_def=plates_partitions)
    @names_plate_and_level
    def stacked_sites(context: dg.AssetExecutionContext) -> None:
        np.stack([np.zeros((904, 1224)), np.zeros((512, 512))])  # what two sizes of image used to do

    instance.add_dynamic_partitions("plates", ["Plate_2"])
    result = dg.materialize([stacked_sites], partition_key="Plate_2", instance=instance, raise_on_error=False)
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    cause = error.cause or error
    assert cause.cls_name == "MdpError"
    assert cause.message.startswith("mdp_assets.errors.MdpError: plate Plate_2, level stacked_sites: unexpected "
                                    "ValueError: all input arrays must have the same shape")


def test_the_intake_sensor_refuses_the_same_images_naming_them(storage, instance, nf1_plate):
    import dagster as dg

    from mdp_assets.config import IntakeSettings, StepSettings
    from mdp_assets.defs.plates.sensors import new_plate_sensor

    victim = _images(storage, nf1_plate, "DAPI")[0]
    tifffile.imwrite(victim, tifffile.imread(victim).astype(np.float32))

    def tick(cursor=None):
        context = dg.build_sensor_context(instance=instance, cursor=cursor, resources={
            "storage": storage, "intake": IntakeSettings(quiet_period_seconds=0), "settings": StepSettings()})
        return new_plate_sensor(context)

    first = tick()
    assert not first.run_requests and storage.registry().get(nf1_plate) is None
    second = tick(first.cursor)
    assert f"{nf1_plate}: rejected" in second.skip_reason.skip_message
    assert f"{victim.name}: a float32 image; float images are refused" in second.skip_reason.skip_message
