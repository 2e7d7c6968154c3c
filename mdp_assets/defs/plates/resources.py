"""Intake settings for the landing zone."""

import dagster as dg
from pydantic import Field


class IntakeSettings(dg.ConfigurableResource):
    """How long a plate folder must stay unchanged before it counts as completely written."""

    quiet_period_seconds: int = Field(default=60, ge=0, description="instruments write for hours")
    max_plates_validated_per_tick: int = Field(
        default=25, ge=1, description="plates whose TIFF headers one tick may read; the rest wait for later ticks"
    )
