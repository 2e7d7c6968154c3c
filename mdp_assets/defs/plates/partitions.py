"""One partition per plate barcode, added when a plate is registered (by the intake sensor, `mdp register` or
`mdp demo`)."""

import dagster as dg

from mdp_assets.plates.registry import PARTITIONS

plates_partitions = dg.DynamicPartitionsDefinition(name=PARTITIONS)
