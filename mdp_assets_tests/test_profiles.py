import numpy as np
import pandas as pd
import pytest

from mdp_assets.errors import MdpError
from mdp_assets.science.embeddings import pca_embedding
from mdp_assets.science.profiles import aggregate, feature_select, normalize, standard_blocklist


def _cells() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = 200
    x = rng.normal(size=n)
    return pd.DataFrame(
        {
            "Metadata_Well": np.repeat(["A01", "A02", "B01", "B02"], n // 4),
            "Metadata_treatment": np.repeat(["DMSO", "DMSO", "drug", "drug"], n // 4),
            "Cells_AreaShape_Area": x,
            "Cells_AreaShape_Perimeter": x * 2 + rng.normal(scale=0.01, size=n),  # correlated with Area
            "Nuclei_Intensity_MeanIntensity_DNA": rng.normal(size=n),
            "Nuclei_Constant": np.ones(n),
            "Cells_Mostly_Missing": np.where(np.arange(n) < 100, np.nan, 1.0),
        }
    )


def test_normalize_to_negative_controls():
    cells = _cells()
    out = normalize(cells, samples="Metadata_treatment == 'DMSO'")
    controls = out[out["Metadata_treatment"] == "DMSO"]
    assert controls["Cells_AreaShape_Area"].mean() == pytest.approx(0, abs=1e-12)
    assert controls["Cells_AreaShape_Area"].std(ddof=0) == pytest.approx(1)
    assert (out["Nuclei_Constant"] == 0).all(), "a constant feature is centred but not scaled"


def test_mad_robustize():
    cells = _cells()
    out = normalize(cells, method="mad_robustize")
    assert np.nanmedian(out["Nuclei_Intensity_MeanIntensity_DNA"]) == pytest.approx(0, abs=1e-12)


def test_feature_select_drops_constant_correlated_and_missing():
    selected = feature_select(_cells())
    features = [c for c in selected.columns if not c.startswith("Metadata_")]
    assert "Nuclei_Constant" not in features and "Cells_Mostly_Missing" not in features
    assert ("Cells_AreaShape_Area" in features) != ("Cells_AreaShape_Perimeter" in features)
    assert "Nuclei_Intensity_MeanIntensity_DNA" in features


def test_blocklist_is_pycytominer_standard():
    blocklist = standard_blocklist()
    assert "Nuclei_Correlation_Manders_AGP_DNA" in blocklist and "blocklist" not in blocklist
    cells = _cells().assign(Nuclei_Correlation_Manders_AGP_DNA=np.random.default_rng(0).normal(size=200))
    assert "Nuclei_Correlation_Manders_AGP_DNA" not in feature_select(cells, operations=["blocklist"]).columns


def test_aggregate_median_carries_well_constant_metadata():
    wells = aggregate(_cells(), strata=["Metadata_Well"])
    assert len(wells) == 4 and (wells["Metadata_Object_Count"] == 50).all()
    assert list(wells["Metadata_treatment"]) == ["DMSO", "DMSO", "drug", "drug"]
    expected = _cells().groupby("Metadata_Well")["Cells_AreaShape_Area"].median().to_numpy()
    assert np.allclose(wells["Cells_AreaShape_Area"], expected)


def test_malformed_profiles_give_clear_errors():
    with pytest.raises(MdpError, match="no Metadata_ columns"):
        normalize(pd.DataFrame({"Cells_A": [1.0, 2.0]}))
    with pytest.raises(MdpError, match="must be numeric"):
        normalize(pd.DataFrame({"Metadata_Well": ["A01"], "Cells_A": ["big"]}))
    with pytest.raises(MdpError, match="no rows"):
        aggregate(pd.DataFrame({"Metadata_Well": pd.Series(dtype=str), "Cells_A": pd.Series(dtype=float)}))


def test_embedding_is_deterministic_and_sign_fixed():
    profiles = normalize(_cells()).drop(columns=["Cells_Mostly_Missing"])
    first = pca_embedding(profiles, 3)
    second = pca_embedding(profiles.sample(frac=1.0, random_state=1).sort_index(), 3)
    pd.testing.assert_frame_equal(first.table, second.table)
    assert list(first.table.columns[-3:]) == ["Embedding_PC1", "Embedding_PC2", "Embedding_PC3"]
    assert first.explained_variance_ratio == sorted(first.explained_variance_ratio, reverse=True)
