"""Profile quality the way the field judges it: do replicate wells of a treatment find each other, and stand
apart from the negative controls? Computed with `copairs` (cytomining/copairs), as its phenotypic-activity
recipe does it:

- every well is a query; its positives are the other wells of its treatment, its negatives the negative-control
  wells (each control well gets its own reference index, so controls are never each other's positives);
- average precision (AP) of each well's ranking by similarity (cosine by default), and per treatment the mean
  (mAP), with a p-value against a null of random rankings of the same size, Benjamini-Hochberg corrected;
- a treatment is *retrieved* when its corrected p-value is below the significance level; the plate's figure
  is the fraction of treatments retrieved.

The negative controls themselves are the null check: the control wells, split in two halves (alternately in
well order), retrieve their own half among the other controls at chance, since they differ only by noise.
Their mAP is reported beside `control_chance`, the mAP a random ranking gives.

A platemap without a treatment column, without negative-control wells or without any treatment in two or
more wells gives a `ProfileQuality` that says why it is not computable, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import numpy as np
import pandas as pd

from mdp_assets.science.profiles import infer_features

REFERENCE_INDEX = "Metadata_Reference_Index"
CONTROL_HALF = "Metadata_Control_Half"
NOT_COMPUTABLE_NO_REPLICATES = "not computable: no replicate wells"
PER_TREATMENT_COLUMNS = [
    "mean_average_precision", "mean_normalized_average_precision", "p_value", "corrected_p_value", "below_p",
    "below_corrected_p", "replicate_wells", "control_wells",
]


def copairs_version() -> str:
    return version("copairs")


@dataclass(frozen=True)
class QualityParameters:
    """copairs' settings: similarity, null distribution size, significance level, random seed."""

    distance: str = "cosine"
    null_size: int = 10_000
    threshold: float = 0.05
    seed: int = 0


@dataclass(frozen=True)
class ProfileQuality:
    """mAP per treatment against the negative controls, or why it cannot be computed."""

    treatment_column: str
    per_treatment: pd.DataFrame  # one row per treatment: the treatment column + PER_TREATMENT_COLUMNS
    parameters: QualityParameters
    not_computable: str | None = None  # the reason, when nothing could be computed
    control_map: float | None = None
    control_chance: float | None = None
    control_p_value: float | None = None
    features: int = 0
    features_with_missing_values: list[str] = field(default_factory=list)

    @property
    def computable(self) -> bool:
        return self.not_computable is None

    @property
    def mean_average_precision(self) -> float | None:
        return float(self.per_treatment["mean_average_precision"].mean()) if self.computable else None

    @property
    def fraction_retrieved(self) -> float | None:
        return float(self.per_treatment["below_corrected_p"].mean()) if self.computable else None

    def below(self, minimum: float) -> pd.DataFrame:
        """The treatments whose mAP is below `minimum`."""
        table = self.per_treatment
        return table[table["mean_average_precision"] < minimum] if self.computable else table.iloc[0:0]

    def summary(self) -> dict[str, Any]:
        """The figures a materialization records (numbers, so the UI plots them across materializations)."""
        params = self.parameters
        out: dict[str, Any] = {
            "quality_method": f"copairs {copairs_version()} mAP, replicate wells against negative controls "
                              f"({params.distance}; null {params.null_size}; BH-corrected p < {params.threshold})",
            "significance_level": params.threshold,
        }
        if not self.computable:
            return {**out, "quality": self.not_computable}
        retrieved = int(self.per_treatment["below_corrected_p"].sum())
        out.update({
            "quality": "computed",
            "mean_average_precision": self.mean_average_precision,
            "fraction_retrieved": self.fraction_retrieved,
            "treatments": len(self.per_treatment),
            "treatments_retrieved": retrieved,
            "features_used": self.features,
        })
        if self.control_map is not None:
            out.update({"control_map": self.control_map, "control_chance": self.control_chance,
                        "control_p_value": self.control_p_value})
        return out


def _not_computable(treatment_column: str, params: QualityParameters, reason: str) -> ProfileQuality:
    empty = pd.DataFrame({treatment_column: pd.Series(dtype=object),
                          **{c: pd.Series(dtype=float) for c in PER_TREATMENT_COLUMNS}})
    return ProfileQuality(treatment_column, empty, params, not_computable=reason)


def complete_features(profiles: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Features with a value in every row (similarities need complete vectors), and those left out."""
    features = infer_features(profiles, "profile quality")
    values = profiles[features]
    complete = values.notna().all().to_numpy() & np.isfinite(values.to_numpy(dtype=np.float64)).all(axis=0)
    return ([f for f, ok in zip(features, complete) if ok], [f for f, ok in zip(features, complete) if not ok])


def replicate_retrieval(
    profiles: pd.DataFrame, treatment_column: str, negative_controls: str | None,
    params: QualityParameters = QualityParameters(),
) -> ProfileQuality:
    """copairs' mAP of every treatment's replicate wells against the negative-control wells (`negative_controls`
    is a pandas query selecting them). Features missing in any well are left out of the similarities."""
    from copairs import map as copairs_map  # with statsmodels and scipy.stats: 0.7 s in every process

    if treatment_column not in profiles.columns:
        return _not_computable(treatment_column, params, f"not computable: the platemap names no treatment "
                               f"column ({treatment_column} missing)")
    if negative_controls is None:
        return _not_computable(treatment_column, params, "not computable: the platemap names no negative control")
    profiles = profiles.reset_index(drop=True)
    is_control = profiles.index.isin(profiles.query(negative_controls).index)
    if not is_control.any():
        return _not_computable(treatment_column, params, f"not computable: no negative-control wells ({negative_controls})")
    treated = profiles.loc[~is_control & profiles[treatment_column].notna(), treatment_column]
    replicated = treated.value_counts()
    replicated = replicated[replicated >= 2]
    if replicated.empty:
        return _not_computable(treatment_column, params, NOT_COMPUTABLE_NO_REPLICATES)
    features, incomplete = complete_features(profiles)
    if not features:
        return _not_computable(treatment_column, params, "not computable: no feature has a value in every well")
    keep = is_control | profiles[treatment_column].isin(replicated.index).to_numpy()
    table = profiles.loc[keep].reset_index(drop=True)
    control_rows = is_control[keep]
    meta = pd.DataFrame({treatment_column: table[treatment_column].astype(str).to_numpy()})
    meta[REFERENCE_INDEX] = np.where(control_rows, np.arange(len(table)), -1)
    feats = table[features].to_numpy(dtype=np.float64)
    sameby = [treatment_column, REFERENCE_INDEX]
    ap = copairs_map.average_precision(meta, feats, pos_sameby=sameby, pos_diffby=[], neg_sameby=[],
                                       neg_diffby=sameby, distance=params.distance, progress_bar=False)
    ap = ap[ap[REFERENCE_INDEX] == -1]
    scores = copairs_map.mean_average_precision(ap, sameby, null_size=params.null_size, threshold=params.threshold,
                                                seed=params.seed, progress_bar=False)
    scores = scores.drop(columns=[REFERENCE_INDEX]).merge(
        replicated.rename("replicate_wells").rename_axis(treatment_column).reset_index().astype({treatment_column: str}),
        on=treatment_column,
    )
    scores["control_wells"] = int(control_rows.sum())
    per_treatment = scores[[treatment_column, *PER_TREATMENT_COLUMNS]].sort_values(treatment_column,
                                                                                     ignore_index=True)
    control = control_null(table.loc[control_rows], features, params)
    return ProfileQuality(treatment_column, per_treatment, params, None, *control, features=len(features),
                          features_with_missing_values=incomplete)


def control_null(controls: pd.DataFrame, features: list[str], params: QualityParameters
                 ) -> tuple[float | None, float | None, float | None]:
    """(mAP, chance, p-value) of the control wells split in two halves retrieving their own half: the null check.
    None when there are fewer than four control wells (two per half)."""
    from copairs import map as copairs_map  # with statsmodels and scipy.stats: 0.7 s in every process

    if len(controls) < 4:
        return None, None, None
    order = controls.sort_values([c for c in ("Metadata_Plate", "Metadata_Well") if c in controls.columns]
                                 or list(controls.columns[:1])).index
    half = pd.Series(np.arange(len(order)) % 2, index=order).reindex(controls.index).map({0: "a", 1: "b"})
    meta = pd.DataFrame({CONTROL_HALF: half.to_numpy()})
    ap = copairs_map.average_precision(meta, controls[features].to_numpy(dtype=np.float64), pos_sameby=[CONTROL_HALF],
                                       pos_diffby=[], neg_sameby=[], neg_diffby=[CONTROL_HALF],
                                       distance=params.distance, progress_bar=False)
    scores = copairs_map.mean_average_precision(ap, [CONTROL_HALF], null_size=params.null_size,
                                                threshold=params.threshold, seed=params.seed, progress_bar=False)
    chance = float((ap["n_pos_pairs"] / ap["n_total_pairs"]).mean())
    return float(ap["average_precision"].mean()), chance, float(scores["p_value"].min())
