"""Profile quality on a full-size demo plate (24 wells: 6 DMSO, 6 of each compound), whose treatments differ
by design: every compound's replicate wells find each other against the DMSO wells, the DMSO wells' own null
check (two halves) is at chance, and the quality table `mdp demo` prints reports mAP per treatment."""

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
