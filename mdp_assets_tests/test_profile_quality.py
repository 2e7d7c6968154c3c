"""Profile quality (replicate-retrieval mAP) on real profiles: mdp's numbers are copairs' numbers.

The profiles are mdp's own well (and site) profiles of the NF1 Schwann cell plate 1 (real CellProfiler
output, genotype Null against WT wells); copairs is run on them directly as its phenotypic-activity recipe
documents (assign_reference_index, average_precision, mean_average_precision)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from copairs import map as copairs_map
from copairs.matching import assign_reference_index

from mdp_assets.defs.profiles.checks import profile_quality_check
from mdp_assets.science.profile_quality import (
    NOT_COMPUTABLE_NO_REPLICATES,
    QualityParameters,
    replicate_retrieval,
)
from mdp_assets.science.profiles import ProfileParameters, aggregate, normalize_and_select
from mdp_assets_tests.nf1_schwann import WT, single_cells

WELL = ("Metadata_Plate", "Metadata_Well")
SITE = ("Metadata_Plate", "Metadata_Well", "Metadata_Site")


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return single_cells()


def profiles(cells: pd.DataFrame, strata) -> pd.DataFrame:
    table, _ = normalize_and_select(aggregate(cells, strata=strata), WT, ProfileParameters())
    return table


def copairs_directly(table: pd.DataFrame, params: QualityParameters) -> pd.DataFrame:
    reference = "Metadata_Reference_Index"
    table = assign_reference_index(table.reset_index(drop=True), WT, reference_col=reference, default_value=-1)
    meta = table.filter(regex="^Metadata_")
    feats = table.filter(regex="^(?!Metadata_)").to_numpy()
    sameby = ["Metadata_genotype", reference]
    ap = copairs_map.average_precision(meta, feats, pos_sameby=sameby, pos_diffby=[], neg_sameby=[], neg_diffby=sameby,
                                       progress_bar=False)
    ap = ap.query(f"{reference} == -1")  # the controls are the reference, not queries
    return copairs_map.mean_average_precision(ap, sameby, null_size=params.null_size, threshold=params.threshold,
                                              seed=params.seed, progress_bar=False)


@pytest.mark.parametrize("strata", [WELL, SITE], ids=["wells", "sites"])
def test_map_equals_copairs_run_directly(cells, strata):
    table = profiles(cells, strata)
    params = QualityParameters()
    ours = replicate_retrieval(table, "Metadata_genotype", WT, params)
    theirs = copairs_directly(table, params)
    assert ours.computable and ours.features == len([c for c in table.columns if not c.startswith("Metadata_")])
    row = ours.per_treatment.set_index("Metadata_genotype").loc["Null"]
    expected = theirs.set_index("Metadata_genotype").loc["Null"]
    for column in ("mean_average_precision", "p_value", "corrected_p_value", "below_corrected_p"):
        assert row[column] == expected[column], column
    assert row["replicate_wells"] == row["control_wells"] == (4 if strata == WELL else 16)
    assert ours.summary()["mean_average_precision"] == expected["mean_average_precision"]
    assert list(ours.per_treatment["Metadata_genotype"]) == ["Null"]  # WT is the reference, not a treatment


def test_what_the_nf1_plate_shows(cells):
    """Measured: per well, Null reaches mAP 0.78 over 4 replicate wells but p 0.17 (4 against 4 wells is too few to
    be significant); per site the 16 sites retrieve each other (mAP 0.88, p 3e-4). The WT wells split in halves
    retrieve their own half at chance (mAP 0.50, chance 0.33, not significant)."""
    wells = replicate_retrieval(profiles(cells, WELL), "Metadata_genotype", WT)
    sites = replicate_retrieval(profiles(cells, SITE), "Metadata_genotype", WT)
    assert wells.mean_average_precision == pytest.approx(0.779, abs=1e-3) and wells.fraction_retrieved == 0.0
    assert sites.mean_average_precision == pytest.approx(0.876, abs=1e-3) and sites.fraction_retrieved == 1.0
    assert wells.control_chance == pytest.approx(1 / 3) and wells.control_p_value > 0.05
    assert wells.control_map < wells.mean_average_precision


def test_the_check_names_the_treatments_below_the_minimum(cells):
    result = replicate_retrieval(profiles(cells, WELL), "Metadata_genotype", WT)
    failing = profile_quality_check(result, min_map=0.9, min_fraction=None)
    assert not failing.passed and failing.metadata["treatments_below_min_map"].value == 1
    assert "Null: mAP 0.779" in failing.metadata["treatments"].value
    assert profile_quality_check(result, min_map=0.5, min_fraction=None).passed
    assert not profile_quality_check(result, min_map=None, min_fraction=0.5).passed  # 0 of 1 retrieved
    assert profile_quality_check(result, min_map=None, min_fraction=None).passed


def test_platemaps_without_replicates_or_controls_are_not_computable(cells):
    table = profiles(cells, WELL)
    # One well per genotype other than the reference: no replicate wells.
    single = table[(table["Metadata_genotype"] == "WT") | (table["Metadata_Well"] == "C7")]
    result = replicate_retrieval(single, "Metadata_genotype", WT)
    assert result.not_computable == NOT_COMPUTABLE_NO_REPLICATES == result.summary()["quality"]
    assert result.per_treatment.empty and "mean_average_precision" not in result.summary()
    assert profile_quality_check(result, min_map=0.9, min_fraction=0.5).passed  # nothing to judge, said so
    no_controls = replicate_retrieval(table, "Metadata_genotype", "Metadata_genotype == 'none'")
    assert no_controls.not_computable.startswith("not computable: no negative-control wells")
    assert replicate_retrieval(table, "Metadata_genotype", None).not_computable.startswith("not computable")
    assert replicate_retrieval(table, "Metadata_Perturbation", WT).not_computable.startswith("not computable")


def test_features_missing_in_a_well_are_left_out(cells):
    table = profiles(cells, WELL)
    feature = [c for c in table.columns if not c.startswith("Metadata_")][0]
    holed = table.copy()
    holed.loc[holed.index[0], feature] = np.nan
    result = replicate_retrieval(holed, "Metadata_genotype", WT)
    assert result.features_with_missing_values == [feature]
    expected = replicate_retrieval(table.drop(columns=[feature]), "Metadata_genotype", WT)
    assert result.mean_average_precision == expected.mean_average_precision
