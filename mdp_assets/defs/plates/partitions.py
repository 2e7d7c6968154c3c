"""One partition per plate barcode, added when a plate is registered (by the intake sensor, `mdp register` or
`mdp demo`)."""

import warnings
from collections.abc import Callable
from typing import Any

import dagster as dg

from mdp_assets.plates.registry import PARTITIONS

plates_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS)


def plate_check(**kwargs: Any) -> Callable[[Callable[..., Any]], dg.AssetChecksDefinition]:
    """`dg.asset_check` for one plate's partition of a level, so the check runs with its plate or alone.
    Partitioned checks are a Dagster preview feature; its warning is silenced here, where mdp chose it, so
    that every command and run log does not repeat it."""

    def decorate(function: Callable[..., Any]) -> dg.AssetChecksDefinition:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", dg.PreviewWarning)
            return dg.asset_check(partitions_def=plates_partitions, **kwargs)(function)

    return decorate
