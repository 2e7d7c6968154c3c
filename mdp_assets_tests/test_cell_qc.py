"""Single-cell QC on real NF1 cells: mdp flags exactly the cells coSMicQC flags.

coSMicQC 1.1.2 cannot be installed beside mdp's pins (it requires pyarrow < 23), so it was run in its own
environment on the same real cells by `tools/cosmicqc_reference.py`; `data/cosmicqc_nf1_reference.json`
holds which cells each of its conditions flagged (its default nuclei conditions, and three custom ones on
eccentricity and DAPI/GFP intensity)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mdp_assets.config import deployment_from_text
from mdp_assets.defs.single_cell.checks import flagged_fraction_check
from mdp_assets.errors import MdpError
from mdp_assets.science.cell_qc import (
    DEFAULT_CONDITIONS,
    OUTLIER,
    cells_for_profiles,
    label_outliers,
    outlier_column,
    well_flags,
    write_cell_qc,
    write_kept_cells,
    zscore_column,
)
from mdp_assets.science.parquet_profiles import aggregate_parquet
from mdp_assets.science.profiles import aggregate
from mdp_assets_tests import nf1_schwann
from mdp_assets_tests.conftest import REALDATA

REFERENCE = json.loads((Path(__file__).parent / "data" / "cosmicqc_nf1_reference.json").read_text())
PLATE2 = REALDATA / "nf1-plate2-cytodataframe" / "NF1_cellpainting_data_shrunken" / "Plate_2_with_image_data_shrunken.parquet"


@pytest.fixture(scope="module")
def nuclei() -> pd.DataFrame:
    return nf1_schwann.nuclei()


def _flagged_ids(nuclei: pd.DataFrame, flags: pd.DataFrame, condition: str) -> list[list[int]]:
    chosen = nuclei[flags[outlier_column(condition)].to_numpy()]
    return sorted([int(a), int(b)] for a, b in zip(chosen["ImageNumber"], chosen["Nuclei_Number_Object_Number"]))


def test_default_conditions_flag_the_cells_cosmicqc_flags(nuclei):
    reference = REFERENCE["nf1_schwann_nuclei"]
    assert len(nuclei) == reference["cells"] == 433
    flags = label_outliers(nuclei, DEFAULT_CONDITIONS)
    assert set(DEFAULT_CONDITIONS) == set(reference["default_conditions"])
    for condition, expected in reference["default_conditions"].items():
        assert _flagged_ids(nuclei, flags, condition) == expected, condition
    assert int(flags[OUTLIER].sum()) == 13  # small, misshapen nuclei; coSMicQC finds no elongated or large ones here


def test_custom_conditions_on_shape_and_intensity_flag_the_cells_cosmicqc_flags(nuclei):
    reference = REFERENCE["nf1_schwann_nuclei"]
    flags = label_outliers(nuclei, reference["custom_conditions"])
    counts = {}
    for condition, expected in reference["custom"].items():
        assert _flagged_ids(nuclei, flags, condition) == expected, condition
        counts[condition] = len(expected)
    assert counts == {"bright_small_nuclei": 1, "elongated_nuclei_loose": 11, "dim_gfp_nuclei": 7}
    # The z-scores are the population z-scores of the plate's cells, as scipy (and coSMicQC) compute them.
    area = nuclei["Nuclei_AreaShape_Area"]
    expected_z = (area - area.mean()) / area.std(ddof=0)
    assert flags[zscore_column("bright_small_nuclei", "Nuclei_AreaShape_Area")].to_numpy() == pytest.approx(expected_z)


def test_nf1_plate2_cells_none_flagged_as_cosmicqc_says():
    cells = pd.read_parquet(PLATE2)
    flags = label_outliers(cells, DEFAULT_CONDITIONS)
    expected = REFERENCE["nf1_plate2_cells"]["default_conditions"]
    assert {c: [int(i) for i in cells.index[flags[outlier_column(c)]]] for c in DEFAULT_CONDITIONS} == expected


def test_missing_features_and_zero_thresholds_are_clear_errors(nuclei, tmp_path):
    with pytest.raises(MdpError, match="no feature \\['Nuclei_AreaShape_Nothing'\\]"):
        label_outliers(nuclei, {"odd": {"Nuclei_AreaShape_Nothing": 2}})
    config = tmp_path / "mdp.yaml"
    with pytest.raises(MdpError, match="cell_qc.*threshold of 0") as error:
        deployment_from_text("cell_qc:\n  conditions:\n    bad: {Nuclei_AreaShape_Area: 0}\n", config)
    assert str(config) in str(error.value)


def _stored_cells(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    cells = nf1_schwann.single_cells()
    cells.insert(3, "Metadata_ObjectNumber", range(1, len(cells) + 1))
    path = tmp_path / "table.parquet"
    cells.to_parquet(path, index=False, row_group_size=50)  # several row groups
    return path, cells


def _stored_qc(path: Path, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    target = tmp_path / "qc.parquet"
    summary = write_cell_qc(path, DEFAULT_CONDITIONS, target)
    qc = pd.read_parquet(target)
    assert summary["cells"] == len(qc) and summary["flagged_cells"] == qc[OUTLIER].sum()
    return target, qc


def test_the_stored_qc_table_equals_the_flags_of_all_cells_at_once(tmp_path):
    path, cells = _stored_cells(tmp_path)
    _, qc = _stored_qc(path, tmp_path)
    keys = ["Metadata_Plate", "Metadata_Well", "Metadata_Site", "Metadata_ObjectNumber"]
    keys = [k for k in keys if k in cells.columns]
    expected = pd.concat([cells[keys], label_outliers(cells, DEFAULT_CONDITIONS)], axis=1)
    pd.testing.assert_frame_equal(qc, expected)


def test_flagged_cells_are_left_out_of_profiles_and_counted(tmp_path):
    path, cells = _stored_cells(tmp_path)
    qc_path, qc = _stored_qc(path, tmp_path)
    assert list(qc["Metadata_ObjectNumber"]) == list(cells["Metadata_ObjectNumber"])
    flagged = qc[OUTLIER].to_numpy()
    assert 0 < flagged.sum() < len(cells)
    with cells_for_profiles(path, qc_path, True, tmp_path / "work") as (kept_path, left_out):
        assert left_out == flagged.sum() and kept_path != path
        kept = pd.read_parquet(kept_path)
        wells = aggregate_parquet(kept_path)
    assert not list((tmp_path / "work").iterdir()), "the copy without flagged cells is removed afterwards"
    pd.testing.assert_frame_equal(kept, cells[~flagged].reset_index(drop=True))
    pd.testing.assert_frame_equal(wells, aggregate(cells[~flagged].reset_index(drop=True)))
    with cells_for_profiles(path, qc_path, False, tmp_path / "work") as (same, none):
        assert same == path and none == 0


def test_qc_of_other_cells_is_refused(tmp_path):
    path, _ = _stored_cells(tmp_path)
    _, qc = _stored_qc(path, tmp_path)
    reversed_qc, first_ten = tmp_path / "reversed.parquet", tmp_path / "ten.parquet"
    qc.iloc[::-1].reset_index(drop=True).to_parquet(reversed_qc, index=False)
    qc.head(10).to_parquet(first_ten, index=False)
    with pytest.raises(MdpError, match="single_cell_qc must be made again"):
        write_kept_cells(path, reversed_qc, tmp_path / "out.parquet")
    with pytest.raises(MdpError, match="lists 10 cells"):
        write_kept_cells(path, first_ten, tmp_path / "out.parquet")
    assert not (tmp_path / "out.parquet").exists()


def test_the_flagged_fraction_check_names_the_wells_over_the_maximum(tmp_path):
    path, _ = _stored_cells(tmp_path)
    qc_path, _ = _stored_qc(path, tmp_path)
    qc = well_flags(qc_path)
    by_well = qc.groupby("Metadata_Well")[OUTLIER].mean()
    assert flagged_fraction_check(qc, 0.5).passed
    worst = by_well.idxmax()
    failing = flagged_fraction_check(qc, float(by_well.max()) - 1e-9)
    assert not failing.passed and failing.metadata["wells_over_maximum"].value == (by_well == by_well.max()).sum()
    assert f"- {worst}: " in failing.metadata["wells"].value
