"""The streamed (Parquet to Parquet, bounded-memory) profile engine gives the numbers of the pandas path and of
pycytominer 1.7.1: on a real CellProfiler plate, and on random tables with missing values, constant columns,
ties and correlated features, in batches as small as one row and one column."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycytominer import feature_select as py_feature_select
from pycytominer import normalize as py_normalize

from mdp_assets.errors import MdpError
from mdp_assets.engines.cellprofiler.outputs import features_from_cellprofiler, read_sqlite_output
from mdp_assets.science.embeddings import pca_embedding, pca_embedding_parquet
from mdp_assets.plates.naming import normalize_well
from mdp_assets.science.parquet_profiles import PairwiseCorrelation, normalize_and_select_parquet
from mdp_assets.plates.platemap import read_platemap
from mdp_assets.science.profiles import ProfileParameters, annotate, normalize_and_select
from mdp_assets_tests.conftest import REALDATA
from mdp_assets_tests.test_profiles_vs_pycytominer import OPERATIONS, plates

NF1_SQLITE = REALDATA / "cytotable-cp-outputs/tests/data/cellprofiler/NF1_SchwannCell_data/all_cellprofiler.sqlite"
NF1_PLATEMAP = REALDATA / "nf1-schwann-metadata/0.download_data/metadata/platemap_NF1_plate1.csv"
ONE_VALUE_AT_A_TIME = 1  # a memory budget of one byte: batches of one column and one row


def _features(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if not c.startswith("Metadata_")]


def _nf1_cells() -> pd.DataFrame:
    """The real NF1 Schwann cell plate's CellProfiler output as single cells, annotated with its real platemap."""
    cells = features_from_cellprofiler(read_sqlite_output(NF1_SQLITE))
    cells["Metadata_Well"] = cells["Metadata_Well"].map(normalize_well)
    return annotate(cells, read_platemap(NF1_PLATEMAP))


@pytest.fixture(scope="module")
def nf1_cells() -> pd.DataFrame:
    return _nf1_cells()


def _streamed(table: pd.DataFrame, folder: Path, negcon: str | None, params: ProfileParameters, budget: int) -> pd.DataFrame:
    source, target = folder / "cells.parquet", folder / "profiles.parquet"
    table.to_parquet(source, index=False)
    normalize_and_select_parquet(source, target, negcon, params, memory_budget=budget)
    return pd.read_parquet(target)


def test_real_plate_streamed_equals_pycytominer(nf1_cells, tmp_path):
    negcon = "Metadata_genotype == 'WT'"
    assert nf1_cells.query(negcon)["Metadata_Well"].nunique() == 4  # C06, D06, E06, F06 on this plate
    params = ProfileParameters()  # variance, correlation, missing values, blocklist
    ours = _streamed(nf1_cells, tmp_path, negcon, params, budget=64 << 20)
    features = _features(nf1_cells)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = py_normalize(nf1_cells, features=features, samples=negcon, method="standardize")
        expected = py_feature_select(expected, features=features, operation=list(params.operations))
    assert 100 < len(_features(expected)) < len(features)
    assert list(ours.columns) == list(expected.columns)
    kept = _features(expected)
    np.testing.assert_allclose(ours[kept].to_numpy(), expected[kept].to_numpy(), rtol=0, atol=1e-9)
    pd.testing.assert_frame_equal(ours.drop(columns=kept), expected.drop(columns=kept), check_dtype=False)


@pytest.mark.parametrize("method", ["standardize", "robustize", "mad_robustize"])
def test_real_plate_streamed_in_tiny_batches_equals_the_pandas_path(nf1_cells, tmp_path, method):
    cells = nf1_cells.iloc[:, :140]  # enough features for correlated pairs; one-column batches are slow
    params = ProfileParameters(normalize_method=method, operations=(*OPERATIONS, "blocklist", "drop_outliers"))
    ours = _streamed(cells, tmp_path, "Metadata_genotype == 'Null'", params, budget=ONE_VALUE_AT_A_TIME)
    expected, _ = normalize_and_select(cells, "Metadata_genotype == 'Null'", params)
    assert list(ours.columns) == list(expected.columns)
    np.testing.assert_allclose(ours[_features(ours)].to_numpy(), expected[_features(expected)].to_numpy(), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(plates(), st.permutations(OPERATIONS), st.integers(1, 4), st.sampled_from(["standardize", "robustize", "mad_robustize"]),
       st.sampled_from([ONE_VALUE_AT_A_TIME, 64 << 20]), st.sampled_from([None, "Metadata_treatment == 'DMSO'", "Metadata_treatment == 'none'"]))
def test_random_tables_streamed_equal_the_pandas_path(tmp_path, table, operations, how_many, method, budget, negcon):
    params = ProfileParameters(normalize_method=method, operations=tuple(operations[:how_many]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected, summary = normalize_and_select(table, negcon, params)
    ours = _streamed(table, tmp_path, negcon, params, budget)
    assert list(ours.columns) == list(expected.columns)
    np.testing.assert_allclose(ours[_features(ours)].to_numpy(), expected[_features(expected)].to_numpy(),
                               rtol=1e-12, atol=1e-12, equal_nan=True)


@settings(max_examples=40, derandomize=True, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 60), st.integers(2, 8), st.integers(1, 25))
def test_pairwise_correlation_over_row_batches_equals_pandas(seed, rows, columns, batch):
    rng = np.random.default_rng(seed)
    values = rng.normal(loc=rng.normal(scale=50, size=columns), size=(rows, columns))
    values[:, 1] = values[:, 0] * -2 + rng.normal(scale=0.1, size=rows)
    values[rng.random((rows, columns)) < 0.15] = np.nan
    expected = pd.DataFrame(values).corr().to_numpy()
    complete = ~np.isnan(values).any(axis=0)
    accumulator = PairwiseCorrelation(shift=np.nanmean(values, axis=0), complete=complete)
    for start in range(0, rows, batch):
        accumulator.add(values[start : start + batch].copy())  # add() works in place
    ours = accumulator.correlation()
    # pandas gives noise instead of NaN for some pairs with no spread; compare where pandas is well defined.
    defined = np.isfinite(expected) & (np.abs(expected) < 1.5)
    np.testing.assert_allclose(ours[defined], expected[defined], rtol=0, atol=1e-10)


def test_streamed_embedding_equals_the_in_memory_one(nf1_cells, tmp_path):
    profiles, _ = normalize_and_select(nf1_cells, "Metadata_genotype == 'WT'", ProfileParameters())
    source, target = tmp_path / "profiles.parquet", tmp_path / "embedding.parquet"
    profiles.to_parquet(source, index=False)
    ratios = pca_embedding_parquet(source, target, n_components=5, memory_budget=200_000)  # batches of ~40 rows
    expected = pca_embedding(profiles, 5)
    ours = pd.read_parquet(target)
    assert list(ours.columns) == list(expected.table.columns)
    components = [f"Embedding_PC{i}" for i in range(1, 6)]
    np.testing.assert_allclose(ours[components].to_numpy(), expected.table[components].to_numpy(), rtol=0, atol=1e-8)
    np.testing.assert_allclose(ratios, expected.explained_variance_ratio, rtol=1e-9)
    assert ratios == sorted(ratios, reverse=True) and sum(ratios) < 1
    # The same components as a full SVD of the centred data (sign fixed by the largest loading).
    features = _features(profiles)
    centred = np.nan_to_num(profiles[features].to_numpy()) - np.nan_to_num(profiles[features].to_numpy()).mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    vt = vt[:5] * np.sign(vt[np.arange(5), np.abs(vt[:5]).argmax(axis=1)])[:, None]
    np.testing.assert_allclose(ours[components].to_numpy(), centred @ vt.T, atol=1e-8)
    np.testing.assert_allclose(ratios, singular[:5] ** 2 / (singular**2).sum(), rtol=1e-9)


def test_malformed_single_cell_files_are_clear_errors(tmp_path):
    params, target = ProfileParameters(), tmp_path / "out.parquet"
    cases = {
        "no Metadata_ columns": pd.DataFrame({"Cells_A": [1.0, 2.0]}),
        "must be numeric, these are not: \\['Cells_B'\\]": pd.DataFrame({"Metadata_Well": ["A01"], "Cells_A": [1.0], "Cells_B": ["big"]}),
        "no rows": pd.DataFrame({"Metadata_Well": pd.Series(dtype=str), "Cells_A": pd.Series(dtype=float)}),
    }
    for message, table in cases.items():
        source = tmp_path / "cells.parquet"
        table.to_parquet(source, index=False)
        with pytest.raises(MdpError, match=message) as error:
            normalize_and_select_parquet(source, target, None, params)
        assert str(source) in str(error.value)
    (tmp_path / "not.parquet").write_text("Metadata_Well,Cells_A\nA01,1\n")
    with pytest.raises(MdpError, match="not a readable Parquet file") as error:
        normalize_and_select_parquet(tmp_path / "not.parquet", target, None, params)
    assert "not.parquet" in str(error.value)
    pd.DataFrame({"Metadata_Well": ["A01"], "Cells_A": [1.0]}).to_parquet(tmp_path / "cells.parquet")
    with pytest.raises(MdpError, match="cannot evaluate samples"):
        normalize_and_select_parquet(tmp_path / "cells.parquet", target, "Metadata_nothing ==", params)
    assert not target.exists() and not list(tmp_path.glob(".*partial"))
