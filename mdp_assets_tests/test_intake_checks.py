"""Intake checks what later steps need before a plate is registered; incomplete plates say what they lack;
`mdp register` and `mdp run` take a real plate from its folder to its levels."""

import hashlib
import shutil
from pathlib import Path

import pytest

from mdp_assets.cli import main
from mdp_assets.errors import MdpError
from mdp_assets.plates.intake import assess_plate, snapshot_landing_zone
from mdp_assets.services.registration import register_plate
from mdp_assets_tests.conftest import REALDATA, write_manifest

PHENIX_V5 = REALDATA / "pe2loaddata-phenix" / "Version5" / "images"
CHANNELS = {"Alexa 488": "ER", "Alexa 568": "AGP", "Alexa 647": "Mito", "488 650": "RNA"}


def _plate(landing, platemap="well_position,treatment\nA01,DMSO\n", drop=(), **manifest):
    folder = landing / "BR00122249"
    shutil.copytree(PHENIX_V5, folder)
    for name in drop:
        (folder / name).unlink()
    (folder / "platemap.csv").write_text(platemap)
    fields = dict(barcode="BR00122249", origin="internal", platemap="platemap.csv", naming_scheme="phenix",
                  expected_image_count=6, channels=CHANNELS, nuclei_channel="Mito")
    write_manifest(folder, **{**fields, **manifest})
    return folder


def _state(folder):
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
                  for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("case, platemap, drop, manifest, message", [
    ("platemap names other wells", "well_position,treatment\nB02,DMSO\n", (), {},
     "images of wells the platemap (platemap.csv) does not list: A01; check the platemap's well column "
     "(manifest field 'platemap_well_column')"),
    ("platemap wells never imaged", "well_position,treatment\nA01,DMSO\nA02,DMSO\n", (), {"imaged_wells": "all"},
     "platemap wells with no images: A02 (imaged_wells: all in plate.yaml; set imaged_wells: subset"),
    ("well column is not a well", "well_position,treatment\nA01,DMSO\n", (), {"platemap_well_column": "treatment"},
     "column 'treatment': 'DMSO' is not a well name"),
    ("nuclei channel unmapped", "well_position,treatment\nA01,DMSO\n", (), {"nuclei_channel": "DNA"},
     "nuclei_channel 'DNA' is not one of the plate's channels ['AGP', 'Brightfield_high', 'Digital_Phase_Contrast', "
     "'ER', 'Mito', 'RNA']; set nuclei_channel, or map a channel to 'DNA' under 'channels:'"),
    ("cell channel unmapped", "well_position,treatment\nA01,DMSO\n", (), {"cell_channel": "Actin"},
     "cell_channel 'Actin' is not one of the plate's channels"),
    ("fewer images", "well_position,treatment\nA01,DMSO\n", ("r01c01f01p01-ch4sk1fk1fl1.tiff",), {},
     "5 images but the manifest's expected_image_count is 6; missing: A01 site 1 ER (`mdp register --allow-incomplete`"),
    ("more images", "well_position,treatment\nA01,DMSO\n", (), {"expected_image_count": 4},
     "6 images but the manifest's expected_image_count is 4"),
    ("negative control matches nothing", "well_position,treatment\nA01,DMSO\n", (),
     {"negative_control": {"column": "treatment", "value": "dmso"}},
     "negative_control value 'dmso' matches no well of platemap column 'treatment' (its values: ['DMSO'])"),
])
def test_a_bad_plate_is_refused_at_intake_naming_file_and_field(storage, case, platemap, drop, manifest, message):
    folder = _plate(storage.landing_path, platemap, drop, **manifest)
    before = _state(folder)
    with pytest.raises(MdpError) as refused:
        register_plate(storage, folder.name)
    assert message in str(refused.value), str(refused.value)
    assert str(folder) in str(refused.value)  # the manifest or the platemap, by path
    assert storage.registry().get(folder.name) is None, "nothing is registered"
    assert _state(folder) == before, "the landing zone is untouched"


def test_a_partly_imaged_plate_registers_by_default(storage):
    folder = _plate(storage.landing_path, "well_position,treatment\nA01,DMSO\nA02,DMSO\n")
    assert register_plate(storage, folder.name).barcode == folder.name


def test_a_stalled_plate_is_reported_incomplete_with_what_it_lacks(storage):
    folder = _plate(storage.landing_path, drop=("r01c01f01p01-ch2sk1fk1fl1.tiff", "r01c01f01p01-ch6sk1fk1fl1.tiff"))
    snapshot = next(s for s in snapshot_landing_zone(storage.landing_path) if s.name == folder.name)
    arriving = assess_plate(snapshot, snapshot.newest_mtime_s + 60, 30, incomplete_after_s=3600)
    assert (arriving.status, arriving.reason) == ("waiting", "4 of 6 images so far")
    stalled = assess_plate(snapshot, snapshot.newest_mtime_s + 7200, 30, incomplete_after_s=3600)
    assert stalled.status == "incomplete"
    assert stalled.reason.startswith("incomplete since 20") and ": 4 of 6 images, missing: A01 site 1 Brightfield_high, A01 site 1 Mito" in stalled.reason
    assert "`mdp register BR00122249 --allow-incomplete`" in stalled.reason


@pytest.mark.slow
def test_register_and_run_a_real_plate_from_the_command_line(storage, capsys):
    """`mdp register --allow-incomplete` then `mdp run --levels`: through the run queue, showing progress."""
    config = str(storage.landing_path.parent.parent / "mdp.yaml")
    folder = _plate(storage.landing_path, drop=("r01c01f01p01-ch1sk1fk1fl1.tiff",))
    assert main(["--config", config, "register", folder.name]) == 2
    assert "5 images but the manifest's expected_image_count is 6" in capsys.readouterr().err
    assert main(["--config", config, "register", str(folder), "--allow-incomplete"]) == 0
    assert "taken incomplete with 5 of 6 images" in capsys.readouterr().out
    assert main(["--config", config, "run", folder.name, "--levels", "masks"]) == 2
    assert "unknown level(s) ['masks']; the levels are ['raw_images', 'image_qc'" in capsys.readouterr().err
    assert main(["--config", config, "run", "NOPE"]) == 2
    assert "unknown plate(s) ['NOPE']; registered plates: ['BR00122249']" in capsys.readouterr().err
    levels = ["raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks"]
    assert main(["--config", config, "run", folder.name, "--levels", *levels]) == 0
    out = capsys.readouterr().out
    assert "BR00122249: segmentation_masks: sites done 1 of 1" in out
    assert "BR00122249: segmentation_masks success [5 of 5 levels done]" in out


def test_the_shipped_pipeline_reads_the_five_cell_painting_channels():
    from mdp_assets.config import CellProfilerSettings
    from mdp_assets.engines.cellprofiler.pipelines import CELL_PAINTING_CHANNELS, pipeline_input_channels

    assert pipeline_input_channels(Path(CellProfilerSettings().analysis_pipeline)) == set(CELL_PAINTING_CHANNELS)


def test_a_plate_the_cellprofiler_pipeline_cannot_read(storage):
    """`engine.kind: cellprofiler` refuses it at registration; `auto` gives it the built-in engine, saying why."""
    from mdp_assets.config import StepSettings
    from mdp_assets.engines.cellprofiler.choice import engine_for_plate

    folder = _plate(storage.landing_path)  # ER, AGP, Mito, RNA and two brightfield channels: no DNA
    explicit = StepSettings(engine="cellprofiler")
    with pytest.raises(MdpError, match=r"cannot feed the CellProfiler pipeline .*analysis.cppipe: it reads channels "
                                       r"\['DNA'\] \(LoadData Orig<channel>\)"):
        register_plate(storage, folder.name, settings=explicit)
    assert storage.registry().get(folder.name) is None
    plate = register_plate(storage, folder.name, settings=StepSettings(engine="cellprofiler", engine_is_auto=True))
    chosen, why = engine_for_plate(StepSettings(engine="cellprofiler", engine_is_auto=True), set(plate.channels))
    assert chosen.engine == "builtin" and "reads channels ['DNA'] the plate does not have" in why
    full = {"DNA", "ER", "RNA", "AGP", "Mito"}
    assert engine_for_plate(StepSettings(engine="cellprofiler", engine_is_auto=True), full)[0].engine == "cellprofiler"


@pytest.mark.parametrize("link", ["platemap", "image", "images folder"])
def test_links_out_of_the_plate_folder_are_refused_before_anything_is_read(storage, tmp_path, link):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "platemap.csv").write_text("well_position,treatment\nA01,DMSO\n")
    folder = _plate(storage.landing_path)
    if link == "platemap":
        (folder / "platemap.csv").unlink()
        (folder / "platemap.csv").symlink_to("/etc/passwd")
    elif link == "image":
        image = folder / "r01c01f01p01-ch3sk1fk1fl1.tiff"
        shutil.move(image, outside / image.name)
        image.symlink_to(outside / image.name)
    else:
        shutil.copytree(folder, outside / "images", ignore=shutil.ignore_patterns("*.csv", "*.yaml"))
        write_manifest(folder, barcode="BR00122249", origin="internal", platemap="platemap.csv",
                       naming_scheme="phenix", expected_image_count=6, channels=CHANNELS, nuclei_channel="Mito",
                       images_subdir="linked")
        (folder / "linked").symlink_to(outside / "images")
    with pytest.raises(MdpError, match="links that lead outside the plate folder"):
        register_plate(storage, folder.name)
    assert storage.registry().get(folder.name) is None
    snapshot = next(s for s in snapshot_landing_zone(storage.landing_path) if s.name == folder.name)
    judged = assess_plate(snapshot, snapshot.newest_mtime_s + 600, 30)
    assert judged.status == "rejected" and "links that lead outside the plate folder" in judged.reason, judged


def test_imaged_wells_the_platemap_leaves_without_a_treatment_fail_a_visible_check(storage, instance, nf1_plate):
    import dagster as dg

    from mdp_assets_tests.conftest import defs_for

    platemap = storage.landing_path / nf1_plate / "platemap.csv"
    lines = platemap.read_text().splitlines()
    # D6 is imaged: leave its genotype empty, as a half-filled platemap would.
    platemap.write_text("\n".join(line.replace(",D6,NF1,WT", ",D6,NF1,").replace(",D6,NF1,Null", ",D6,NF1,")
                                  for line in lines) + "\n")
    assert ",D6,NF1,\n" in platemap.read_text()
    register_plate(storage, nf1_plate)
    instance.add_dynamic_partitions("plates", [nf1_plate])
    check = dg.AssetCheckKey(dg.AssetKey("raw_images"), "platemap_matches_images")
    job = defs_for(storage).resolve_job_def("plate_job").get_subset(asset_selection={dg.AssetKey("raw_images")},
                                                                     asset_check_selection={check})
    result = job.execute_in_process(instance=instance, partition_key=nf1_plate, raise_on_error=False)
    (evaluation,) = result.get_asset_check_evaluations()
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.description == "1 imaged well(s) have no 'genotype' in the platemap: D06"
    assert evaluation.metadata["platemap_wells_not_imaged"].value.startswith("A01, A06")
