"""One partition per plate barcode, added when a plate is registered (by the intake sensor, `mdp register` or
`mdp demo`)."""

import functools
import warnings
from collections.abc import Callable
from typing import Any

import dagster as dg

from mdp_assets.errors import MdpError
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


def names_plate_and_level(function: Callable[..., Any]) -> Callable[..., Any]:
    """A level's body whose unexpected errors (a numpy ValueError, an OSError) reach a person as an MdpError
    naming the plate, the level and, where the error knows it, the file, never as a bare exception."""
    level = function.__name__

    @functools.wraps(function)
    def body(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (MdpError, dg.Failure, dg.RetryRequested, dg.DagsterError):
            raise
        except Exception as exc:
            context = kwargs.get("context", args[0] if args else None)
            plate = getattr(context, "partition_key", None) if getattr(context, "has_partition_key", False) else None
            filename = getattr(exc, "filename", None)
            raise MdpError(f"{f'plate {plate}, ' if plate else 'all plates, '}level {level}: unexpected "
                           f"{type(exc).__name__}: {exc}", path=filename) from exc

    return body
