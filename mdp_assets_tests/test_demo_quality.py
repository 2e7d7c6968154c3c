"""Profile quality on a full-size demo plate (24 wells: 6 DMSO, 6 of each compound), whose treatments differ
by design: every compound's replicate wells find each other against the DMSO wells, the DMSO wells' own null
check (two halves) is at chance, and the quality table `mdp demo` prints reports mAP per treatment."""

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.services.summary import quality_rows, quality_table
from mdp_assets_tests.conftest import defs_for, stored

pytestmark = pytest.mark.slow


def test_demo_plate_quality_in_the_summary(storage, instance):
    defs = defs_for(storage)
    write_demo_plate(storage.landing_path, DemoPlateSpec(barcode="DEMO-Q1", seed=1))
    instance.add_dynamic_partitions("plates", ["DEMO-Q1"])
    assert defs.resolve_job_def("plate_job").execute_in_process(instance=instance, partition_key="DEMO-Q1").success

    quality = pd.read_parquet(stored(storage, "profile_quality", "DEMO-Q1") / "table.parquet")
    assert list(quality["Metadata_Perturbation"]) == ["compound_A", "compound_B", "compound_C"]
    assert (quality["replicate_wells"] == 6).all() and (quality["control_wells"] == 6).all()
    # Measured: every compound mAP 1.0 at the smallest p a 10,000-sample null gives.
    assert (quality["mean_average_precision"] > 0.9).all() and quality["below_corrected_p"].all()
    event = instance.get_latest_materialization_event(dg.AssetKey("profile_quality"))
    meta = {k: v.value for k, v in event.asset_materialization.metadata.items()}
    assert meta["fraction_retrieved"] == 1.0 and meta["treatments_retrieved"] == 3
    assert isinstance(meta["mean_average_precision"], float)  # numeric metadata: the UI plots it
    # The controls against themselves: measured mAP 0.67 against a chance of 0.40, p 0.29 (6 wells, 3 per half):
    # within the null, far below the compounds.
    assert meta["control_chance"] == pytest.approx(0.4)
    assert meta["control_p_value"] > meta["significance_level"]
    assert meta["control_map"] < quality["mean_average_precision"].min() - 0.2

    rows = quality_rows(instance, ["DEMO-Q1"], storage)
    by_treatment = {row[1]: row for row in rows}
    assert by_treatment["compound_A"][2:] == [f"{quality['mean_average_precision'][0]:.3f}",
                                              f"{quality['corrected_p_value'][0]:.3g}", "yes"]
    controls = by_treatment["(negative controls, two halves)"]
    assert controls[2] == f"{meta['control_map']:.3f}" and controls[4] == "chance 0.400"
    assert by_treatment["(cells flagged by QC)"][4] == "left out"
    table = quality_table(instance, ["DEMO-Q1"], storage)
    assert "compound_B" in table and "mAP" in table.splitlines()[1]


SMALL = dict(rows="BCDE", columns=(2, 3, 4), sites_per_well=1, image_size=160, cells_per_site=12)


def test_a_profile_parameter_change_shows_in_the_map_history(storage, instance):
    """A lab changes a profile setting, re-makes the plate's stale levels, and sees both mAP values in the
    profile_quality materialization history (what the UI plots across materializations)."""
    from mdp_assets.plates.inventory import plate_fingerprint
    from mdp_assets.services.instance_status import stale_assets
    from mdp_assets_tests.conftest import make_deployment

    plate = "DEMO-H1"
    write_demo_plate(storage.landing_path, DemoPlateSpec(barcode=plate, seed=3, **SMALL))
    instance.add_dynamic_partitions("plates", [plate])
    assert defs_for(storage).resolve_job_def("plate_job").execute_in_process(instance=instance, partition_key=plate).success

    make_deployment(Path(storage.data_root).parent, profiles={"normalize_method": "mad_robustize", "corr_threshold": 0.6})
    changed = defs_for(storage)
    graph = changed.resolve_asset_graph()
    keys = [k for k in graph.toposorted_asset_keys if graph.get(k).partitions_def is not None]
    stale = stale_assets(instance, changed, keys, plate, plate_fingerprint(storage.plate_folder(plate)))
    assert {k.path[-1] for k in stale} == {"single_cell_profiles", "well_profiles", "profile_quality",
                                           "single_cell_embeddings", "well_embeddings"}
    result = changed.resolve_job_def("plate_job").execute_in_process(instance=instance, partition_key=plate,
                                                                       asset_selection=stale)
    assert result.success

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("profile_quality"), asset_partitions=[plate]), limit=10).records
    history = [r.asset_materialization for r in reversed(records)]  # oldest first
    assert len(history) == 2
    values = [m.metadata["mean_average_precision"].value for m in history]
    features = [m.metadata["features_used"].value for m in history]
    assert all(isinstance(v, float) and 0 < v <= 1 for v in values)
    assert features[1] < features[0], "the lower correlation threshold keeps fewer features"
    # Measured: mAP 1.000 over 59 features before, 0.795 over 17 after; the UI plots the drop.
    assert values[1] < values[0]
    versions = [m.tags["dagster/code_version"] for m in history]
    assert versions[0] == versions[1]  # profile_quality's own code is unchanged; its input was re-made
    inputs = [m.metadata["provenance"].value["inputs"][0]["data_version"] for m in history]
    assert inputs[0] != inputs[1]
    now = pd.read_parquet(stored(storage, "profile_quality", plate) / "table.parquet")
    assert values[1] == pytest.approx(now["mean_average_precision"].mean())
