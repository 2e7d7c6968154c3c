"""The profile-quality check, its own step over the stored per-treatment table: runs with `profile_quality`
or alone, and names the treatments that fall short."""

import dagster as dg
import pandas as pd

from mdp_assets.config import StepSettings
from mdp_assets.defs.plates.partitions import plate_check
from mdp_assets.plates.registry import PERTURBATION
from mdp_assets.science.profile_quality import ProfileQuality


def profile_quality_check(result, min_map: float | None, min_fraction: float | None) -> dg.AssetCheckResult:
    """Fails naming every treatment below `min_map`, or when the fraction retrieved is below `min_fraction`."""
    if not result.computable:
        return dg.AssetCheckResult(check_name="min_map", passed=True, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"quality": result.not_computable})
    short = result.below(min_map) if min_map is not None else result.per_treatment.iloc[0:0]
    fraction = result.fraction_retrieved
    fraction_short = min_fraction is not None and fraction < min_fraction
    column = result.treatment_column
    return dg.AssetCheckResult(
        check_name="min_map",
        passed=short.empty and not fraction_short,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "min_map": min_map if min_map is not None else "not set",
            "min_fraction_retrieved": min_fraction if min_fraction is not None else "not set",
            "fraction_retrieved": fraction,
            "treatments_below_min_map": len(short),
            "treatments": dg.MetadataValue.md("\n".join(
                f"- {getattr(r, column)}: mAP {r.mean_average_precision:.3f} (corrected p {r.corrected_p_value:.3g})"
                for r in short.itertuples()) or "none"),
        },
    )


@plate_check(asset="profile_quality",
                description="every treatment's mAP reaches profile_quality.min_map (and the plate's fraction retrieved "
                "profile_quality.min_fraction_retrieved); names those short")
def min_map(profile_quality: pd.DataFrame, settings: StepSettings) -> dg.AssetCheckResult:
    quality = settings.profile_quality
    scored = ProfileQuality(PERTURBATION, profile_quality, quality.parameters(),
                            None if len(profile_quality) else "not computable (the asset's metadata says why)")
    return profile_quality_check(scored, quality.min_map, quality.min_fraction_retrieved)
