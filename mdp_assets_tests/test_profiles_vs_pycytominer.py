"""mdp's profile operations give pycytominer's (1.7.1) results: on its own test data, and on random tables
with missing values, constant columns, ties and correlated features."""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycytominer import aggregate as py_aggregate
from pycytominer import feature_select as py_feature_select
from pycytominer import normalize as py_normalize

from mdp_assets.errors import MdpError
from mdp_assets.science import parquet_profiles
from mdp_assets.science import profiles as mdp
from mdp_assets_tests.conftest import REALDATA

TESTDATA = REALDATA / "pycytominer-testdata" / "tests" / "test_data" / "minimal_wheel_build_tests"
OPERATIONS = ["variance_threshold", "frequency_threshold", "correlation_threshold", "drop_na_columns"]


def _features(table):
    return [c for c in table.columns if not c.startswith("Metadata_")]


def test_pycytominers_minimal_profiles():
    profiles = pd.read_parquet(TESTDATA / "profiles.parquet")
    features = _features(profiles)
    for method in ("standardize", "robustize", "mad_robustize"):
        expected = py_normalize(profiles, features=features, method=method)
        np.testing.assert_allclose(mdp.normalize(profiles, method=method)[features], expected[features], atol=1e-12)
    expected = py_aggregate(profiles, strata=["Metadata_Plate", "Metadata_Well"], features=features)
    ours = mdp.aggregate(profiles)
    np.testing.assert_allclose(ours[features].to_numpy(float), expected[features].to_numpy(float))


def test_pycytominers_blocklist_example():
    profiles = pd.read_parquet(TESTDATA / "profiles_blocklist.parquet")
    expected = py_feature_select(profiles, features=_features(profiles), operation="blocklist")
    ours = mdp.feature_select(profiles, operations=["blocklist"])
    assert list(ours.columns) == list(expected.columns) == ["Metadata_Plate", "Cells_AreaShape_Area"]


@st.composite
def plates(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows, columns = draw(st.integers(6, 40)), draw(st.integers(3, 10))
    values = rng.normal(size=(rows, columns)).round(draw(st.integers(0, 3)))  # rounding makes ties
    kinds = draw(st.lists(st.sampled_from(["plain", "constant", "copy", "sparse", "nan", "rare"]),
                          min_size=columns, max_size=columns))
    for index, kind in enumerate(kinds):
        if kind == "constant":
            values[:, index] = 3.0
        elif kind == "copy" and index:
            values[:, index] = values[:, index - 1] * 1.5 + rng.normal(scale=0.01, size=rows)
        elif kind == "sparse":
            values[rng.random(rows) < 0.3, index] = np.nan
        elif kind == "nan":
            values[rng.random(rows) < 0.02, index] = np.nan
        elif kind == "rare":
            values[:, index] = (rng.random(rows) < 0.04).astype(float)
    table = pd.DataFrame(values, columns=[f"Cells_Feature_{i}" for i in range(columns)])
    table.insert(0, "Metadata_Well", rng.choice(["A01", "A02", "B01", "B02"], rows))
    table.insert(0, "Metadata_Plate", "P1")
    table.insert(2, "Metadata_treatment", np.where(table["Metadata_Well"].isin(["A01", "B01"]), "DMSO", "drug"))
    return table


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plates(), st.sampled_from(["standardize", "robustize", "mad_robustize"]),
       st.sampled_from(["all", "Metadata_treatment == 'DMSO'"]))
def test_normalize_agrees(table, method, samples):
    features = _features(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = py_normalize(table, features=features, method=method, samples=samples)
        except ValueError:  # no reference rows: pycytominer's scaler refuses, and so must mdp, clearly
            with pytest.raises(MdpError, match="no rows match samples"):
                mdp.normalize(table, method=method, samples=samples)
            return
    ours = mdp.normalize(table, method=method, samples=samples)
    np.testing.assert_allclose(ours[features].to_numpy(float), expected[features].to_numpy(float),
                               rtol=1e-9, atol=1e-9, equal_nan=True)


@settings(max_examples=80, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plates(), st.permutations(OPERATIONS), st.integers(1, 4))
def test_feature_select_agrees(table, operations, how_many):
    operations = list(operations[:how_many])
    features = _features(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            expected = py_feature_select(table, features=features, operation=operations)
        except ValueError:
            # scikit-learn refuses a table in which no feature has variance, or no feature is left at all:
            # pycytominer then crashes where the answer is "no feature survives", which mdp must return.
            ours = mdp.feature_select(table, operations=operations)
            assert _features(ours) == []
            return
    ours = mdp.feature_select(table, operations=operations)
    assert list(ours.columns) == list(expected.columns)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(plates(), st.sampled_from(["median", "mean"]))
def test_aggregate_agrees(table, operation):
    features = _features(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = py_aggregate(table, strata=["Metadata_Plate", "Metadata_Well"], features=features, operation=operation)
    ours = mdp.aggregate(table, operation=operation)
    assert list(ours["Metadata_Well"]) == list(expected["Metadata_Well"])
    np.testing.assert_allclose(ours[features].to_numpy(float), expected[features].to_numpy(float),
                               rtol=1e-12, equal_nan=True)


def test_malformed_input_is_a_clear_error():
    with pytest.raises(MdpError, match="no rows"):
        mdp.feature_select(pd.DataFrame({"Metadata_Well": pd.Series(dtype=str), "Cells_A": pd.Series(dtype=float)}))


@settings(max_examples=30, derandomize=True, deadline=None)
@given(plates(), st.sampled_from(["median", "mean"]), st.integers(1, 4))
def test_aggregate_from_parquet_in_column_batches_agrees(table, operation, batch_columns):
    import tempfile
    from pathlib import Path

    features = _features(table)
    table = table.astype({f: np.float32 for f in features})  # as single-cell features are stored
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cells.parquet"
        table.to_parquet(path, index=False)
        ours = parquet_profiles.aggregate_parquet(path, operation=operation, batch_columns=batch_columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = py_aggregate(table, strata=["Metadata_Plate", "Metadata_Well"], features=features, operation=operation)
    assert list(ours["Metadata_Well"]) == list(expected["Metadata_Well"])
    np.testing.assert_allclose(ours[features].to_numpy(float), expected[features].to_numpy(float),
                               rtol=1e-12, atol=0, equal_nan=True)


def test_aggregate_parquet_rejects_malformed_files(tmp_path):
    from mdp_assets.errors import MdpError

    path = tmp_path / "bad.parquet"
    pd.DataFrame({"Cells_A": [1.0]}).to_parquet(path)
    with pytest.raises(MdpError, match="no Metadata_ columns"):
        parquet_profiles.aggregate_parquet(path)
    pd.DataFrame({"Metadata_Plate": ["P"], "Metadata_Well": ["A01"], "Cells_A": ["x"]}).to_parquet(path)
    with pytest.raises(MdpError, match="must be numeric"):
        parquet_profiles.aggregate_parquet(path)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(plates(), st.integers(1, 3))
def test_modz_consensus_agrees(table, copies):
    from pycytominer import consensus as py_consensus

    features = _features(table)
    table = pd.concat([table] * copies, ignore_index=True) if copies > 1 else table
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = py_consensus(table, replicate_columns=["Metadata_treatment"], operation="modz", features=features)
        ours = mdp.consensus(table, ["Metadata_treatment"], operation="modz")
    assert list(ours["Metadata_treatment"]) == list(expected["Metadata_treatment"])
    np.testing.assert_allclose(ours[features].to_numpy(float), expected[features].to_numpy(float),
                               rtol=1e-9, atol=1e-12, equal_nan=True)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(plates(), st.sampled_from([1.0, 2.5, 500.0]))
def test_drop_outliers_agrees(table, cutoff):
    features = _features(table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = py_feature_select(table, features=features, operation="drop_outliers", outlier_cutoff=cutoff)
    ours = mdp.feature_select(table, operations=["drop_outliers"], outlier_cutoff=cutoff)
    assert list(ours.columns) == list(expected.columns)
