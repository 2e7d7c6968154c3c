"""The IO manager: atomic, checksummed partitions whose metadata match what is on disk."""

import json

import dagster as dg
import pandas as pd
import pytest

from mdp_assets.config import StepSettings
from mdp_assets.storage.resource import MdpStorage
from mdp_assets.storage.io_manager import PlateLevelIOManager
from mdp_assets.storage.partitions import StagedFiles, StoredPartition
from mdp_assets.storage.store import BOOKKEEPING
from mdp_assets.errors import MdpError
from mdp_assets.checksums import record_files, tree_digest

plates = dg.DynamicPartitionsDefinition(name="plates")

TOY_POLICY = """
name: toy
tiers:
  internal-drive: {backend: filesystem, path: internal-drive, access: private, longevity: intermediate, usage_speed: instant}
levels:
  table_level: [{tier: internal-drive}]
  files_level: [{tier: internal-drive}]
  reader: [{tier: internal-drive}]
  flaky: [{tier: internal-drive}]
origins: {internal: [private], collaborator-academic: [private], collaborator-industry: [private], public: [private]}
"""


@pytest.fixture
def storage(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(TOY_POLICY)
    return MdpStorage(data_root=str(tmp_path / "data"), policy_file=str(policy))


def test_table_and_files_round_trip_with_true_checksums(storage, instance):
    @dg.asset(partitions_def=plates)
    def table_level() -> pd.DataFrame:
        return pd.DataFrame({"Metadata_Well": ["A01", "A02"], "x": [1.0, 2.0]})

    @dg.asset(partitions_def=plates)
    def files_level(table_level: pd.DataFrame, storage: MdpStorage) -> StagedFiles:
        with storage.staging_dir("files_level") as staged:
            (staged / "a.txt").write_text(str(len(table_level)))
            return StagedFiles(staged)

    @dg.asset(partitions_def=plates)
    def reader(files_level: StoredPartition) -> pd.DataFrame:
        return pd.DataFrame({"Metadata_n": [int(files_level.path("a.txt").read_text())]})

    instance.add_dynamic_partitions("plates", ["P1"])
    result = dg.materialize([table_level, files_level, reader], partition_key="P1", instance=instance,
                            resources={"storage": storage, "io_manager": PlateLevelIOManager(storage=storage, settings=StepSettings())})
    assert result.success
    for event in result.get_asset_materialization_events():
        meta = {k: v.value for k, v in event.materialization.metadata.items()}
        folder = storage.tier("internal-drive").folder(f"{event.materialization.asset_key.path[-1]}/P1")
        records = [r for r in record_files(folder) if r.relpath not in BOOKKEEPING]
        assert meta["sha256"] == tree_digest(records) and meta["bytes"] == sum(r.bytes for r in records)
        assert meta["uri"] == folder.as_uri()
    record = json.loads((storage.tier("internal-drive").folder("reader/P1") / "_partition.json").read_text())
    assert record["kind"] == "table" and record["rows"] == 1 and record["partition"] == "P1"
    assert not any((storage.root / ".staging").iterdir()), "staging is emptied by the move into the tier"


def test_failed_step_leaves_nothing_and_keeps_the_previous_partition(storage, instance):
    attempt = {"fail": False}

    @dg.asset(partitions_def=plates)
    def flaky(storage: MdpStorage) -> StagedFiles:
        with storage.staging_dir("flaky") as staged:
            (staged / "data.bin").write_bytes(b"v1" if not attempt["fail"] else b"v2-partial")
            if attempt["fail"]:
                raise RuntimeError("instrument share went away")
            return StagedFiles(staged)

    instance.add_dynamic_partitions("plates", ["P1"])
    resources = {"storage": storage, "io_manager": PlateLevelIOManager(storage=storage, settings=StepSettings())}
    assert dg.materialize([flaky], partition_key="P1", instance=instance, resources=resources).success
    attempt["fail"] = True
    result = dg.materialize([flaky], partition_key="P1", instance=instance, resources=resources, raise_on_error=False)
    assert not result.success
    folder = storage.tier("internal-drive").folder("flaky/P1")
    assert (folder / "data.bin").read_bytes() == b"v1"
    assert not any((storage.root / ".staging").iterdir())
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "no partial or parked folders"


def test_reading_a_missing_partition_is_a_clear_error(storage):
    with pytest.raises(MdpError, match="reader for P9 is not materialized in any tier"):
        storage.store().read("reader", "P9")
