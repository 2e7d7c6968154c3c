"""One partition per plate barcode, added when a plate arrives (by the intake sensor or `mdp demo`)."""

import dagster as dg

plates_partitions = dg.DynamicPartitionsDefinition(name="plates")
