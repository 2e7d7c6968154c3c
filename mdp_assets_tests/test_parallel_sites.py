"""Sites in parallel processes (mdp_assets/parallel.py): the early levels' outputs on the real NF1 plate are the
same made in one process or in several, corrected images are stored in the raw bit depth, and the worker count
comes from the deployment."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mdp_assets.config import StepSettings
from mdp_assets.errors import MdpError
from mdp_assets.parallel import SITE_MODULES, available_cores, map_sites, resolve_workers
from mdp_assets.plates.inventory import PlateFolder, inventory_plate
from mdp_assets.plates.tiff_metadata import read_plane
from mdp_assets.science.illumination import (IlluminationParameters, apply_illumination, write_corrected_images,
                                             write_illumination_functions)
from mdp_assets.science.image_qc import QcThresholds, measure_plate_quality, passing_sites
from mdp_assets.science.image_store import read_stack
from mdp_assets.science.segmentation import SegmentationParameters, write_masks
from mdp_assets_tests.conftest import make_deployment


def _pid_and_square(value: int) -> tuple[int, int]:
    return os.getpid(), value * value


def _fails_on_three(value: int) -> int:
    if value == 3:
        raise MdpError(f"site {value} is damaged")
    return value


def test_map_sites_returns_results_in_input_order_from_other_processes():
    items = list(range(40, 0, -1))
    results = map_sites(_pid_and_square, items, workers=2)
    assert [square for _, square in results] == [i * i for i in items]
    pids = {pid for pid, _ in results}
    assert os.getpid() not in pids and len(pids) >= 1, "the work ran in worker processes"
    assert {pid for pid, _ in map_sites(_pid_and_square, items, workers=1)} == {os.getpid()}, "1: in this process"


def test_a_worker_error_is_raised_in_the_caller_with_its_message():
    with pytest.raises(MdpError, match="site 3 is damaged"):
        map_sites(_fails_on_three, range(8), workers=2)


def test_the_fork_server_preloads_every_module_that_runs_sites():
    """Each module that hands sites to the workers is imported once by the fork server, not by every worker."""
    package = Path(__file__).resolve().parents[1] / "mdp_assets"
    users = {".".join(path.relative_to(package.parent).with_suffix("").parts) for path in package.rglob("*.py")
             if "from mdp_assets.parallel import" in path.read_text()}
    assert users == set(SITE_MODULES)


def test_zero_workers_means_one_per_available_core():
    assert resolve_workers(0) == available_cores() == len(os.sched_getaffinity(0))
    assert resolve_workers(3) == 3
    with pytest.raises(MdpError):
        resolve_workers(-1)


def test_the_worker_count_comes_from_the_deployment(tmp_path: Path):
    deployment = make_deployment(tmp_path, compute={"workers": 3})
    assert StepSettings.from_config(deployment.config).compute.workers == 3
    assert StepSettings.from_config(make_deployment(tmp_path / "default").config).compute.workers == 0
    with pytest.raises(MdpError, match="compute.workers"):
        make_deployment(tmp_path / "bad", compute={"workers": -2})
    # It changes no output, so no level's code version depends on it.
    one = StepSettings.from_config(deployment.config)
    other = StepSettings.from_config(make_deployment(tmp_path / "four", compute={"workers": 4}).config)
    assert all(one.code_version(a) == other.code_version(a)
               for a in ("raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks"))


def _early_levels(folder: PlateFolder, out: Path, workers: int) -> dict:
    """The built-in engine's raw_images .. segmentation_masks of one plate, made with `workers` processes."""
    raw = inventory_plate(folder, workers)
    qc = measure_plate_quality(raw, QcThresholds(), workers)
    good = passing_sites(qc)
    illumination, corrected, masks = out / "illumination", out / "corrected", out / "masks"
    for path in (illumination, corrected, masks):
        path.mkdir(parents=True)
    used = write_illumination_functions(raw, good, illumination, IlluminationParameters(), workers)
    done: list[int] = []
    sites = write_corrected_images(raw, good, illumination, corrected, done.append, workers)
    masks_index = write_masks(sites, corrected, masks, "DAPI", None, SegmentationParameters(), workers=workers)
    return {"raw": raw, "qc": qc, "used": used, "sites": sites, "progress": done, "masks": masks_index,
            "illumination": illumination, "corrected": corrected, "masks_dir": masks}


@pytest.mark.slow
def test_early_levels_of_the_real_nf1_plate_are_the_same_in_one_process_or_two(storage, nf1_plate, tmp_path: Path):
    folder = PlateFolder.open(storage.landing_path / nf1_plate)
    serial = _early_levels(folder, tmp_path / "serial", workers=1)
    parallel = _early_levels(folder, tmp_path / "parallel", workers=2)
    pd.testing.assert_frame_equal(serial["raw"], parallel["raw"])
    pd.testing.assert_frame_equal(serial["qc"], parallel["qc"])
    assert serial["used"] == parallel["used"] == {"DAPI": 5, "GFP": 5, "RFP": 5}
    for channel in serial["used"]:
        assert (serial["illumination"] / f"{channel}.npy").read_bytes() == \
            (parallel["illumination"] / f"{channel}.npy").read_bytes(), channel
    pd.testing.assert_frame_equal(serial["sites"], parallel["sites"])
    assert parallel["progress"] == list(range(1, len(parallel["sites"]) + 1))
    pd.testing.assert_frame_equal(serial["masks"], parallel["masks"])
    assert serial["masks"]["Count_Nuclei"].sum() > 20, "real nuclei were found"
    for name in serial["sites"]["file_name"]:
        assert np.array_equal(read_stack(serial["corrected"] / name, as_stored=True)[0],
                              read_stack(parallel["corrected"] / name, as_stored=True)[0]), name
    for name in serial["masks"]["file_name"]:
        assert np.array_equal(read_stack(serial["masks_dir"] / name)[0], read_stack(parallel["masks_dir"] / name)[0])


@pytest.mark.slow
def test_corrected_images_are_stored_in_the_raw_bit_depth_and_read_as_intensities(storage, nf1_plate, tmp_path: Path):
    folder = PlateFolder.open(storage.landing_path / nf1_plate)
    raw = inventory_plate(folder, 1)
    good = {(w, int(s)) for w, s in raw[["Metadata_Well", "Metadata_Site"]].drop_duplicates().itertuples(index=False)}
    made = {"illumination": tmp_path / "illumination", "corrected": tmp_path / "corrected"}
    for path in made.values():
        path.mkdir()
    write_illumination_functions(raw, good, made["illumination"], IlluminationParameters())
    site = write_corrected_images(raw, good, made["illumination"], made["corrected"]).iloc[0]
    stored, names = read_stack(made["corrected"] / site.file_name, as_stored=True)
    assert stored.dtype == np.uint16 and names == ["DAPI", "GFP", "RFP"]
    intensities, _ = read_stack(made["corrected"] / site.file_name)
    assert intensities.dtype == np.float32
    rows = raw[(raw["Metadata_Well"] == site.Metadata_Well) & (raw["Metadata_Site"] == site.Metadata_Site)]
    for index, channel in enumerate(names):
        path = Path(rows[rows["Metadata_Channel"] == channel]["uri"].iloc[0].removeprefix("file://"))
        exact = apply_illumination(read_plane(path), np.load(made["illumination"] / f"{channel}.npy"))
        # Rounded to the nearest grey level: at most half of one 65535th off, never clipped (functions >= 1).
        assert np.abs(intensities[index] - exact).max() <= 0.5 / 65535 + 1e-7
        assert exact.max() <= 1.0
    float32_bytes = stored.size * 4
    on_disk = (made["corrected"] / site.file_name).stat().st_size
    assert on_disk < float32_bytes / 2, f"{on_disk} bytes on disk vs {float32_bytes} as float32"


def test_run_queue_and_step_limits_come_from_the_deployment(tmp_path: Path):
    from mdp_assets.definitions import executor_for
    from mdp_assets.services.instance import instance_config

    deployment = make_deployment(tmp_path, execution={"executor": "multiprocess", "max_concurrent_steps": 3,
                                                      "max_concurrent_runs": 5, "runs_per_plate": 1})
    runs = instance_config(deployment)["concurrency"]["runs"]
    assert runs["max_concurrent_runs"] == 5
    assert runs["tag_concurrency_limits"][0]["limit"] == 1, "one run of a plate at a time"
    executor = executor_for(deployment)
    assert executor.name == "multiprocess"
    assert executor.apply_config_mapping({}).value["config"]["max_concurrent"] == 3, "steps of one run at once"
