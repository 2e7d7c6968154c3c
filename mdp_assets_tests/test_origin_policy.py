"""A plate's origin is fixed at registration; reclassifying is an explicit, recorded act that moves or withdraws
what may no longer stay; a policy that would expose stored data is refused when it loads; identifiable-patient
plates' inventories stay off cloud tiers without a rule."""

import json
import stat

import dagster as dg
import duckdb
import pandas as pd
import pytest
import yaml

from mdp_assets.cli import main
from mdp_assets.config import StepSettings, load_deployment
from mdp_assets.errors import MdpError
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.services.reclassify import reclassify_plate
from mdp_assets.services.runs import instance_for
from mdp_assets.services.registration import register_plate
from mdp_assets.storage.io_manager import PlateLevelIOManager
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import defs_for, make_deployment, register_toy_plate, stored

plates = dg.DynamicPartitionsDefinition(name="plates")
ORIGINS = {"internal": ["private", "public"], "collaborator-academic": ["private"],
           "collaborator-industry": ["private"], "public": ["private", "public"]}
SPEC = DemoPlateSpec(barcode="DEMO-ORIGIN", rows="B", columns=(2, 3), sites_per_well=1, image_size=128, cells_per_site=9)


def _fs(path, access="private", **extra):
    return {"backend": "filesystem", "path": path, "access": access, "longevity": "high", "usage_speed": "instant", **extra}


def _write_policy(path, tiers, levels):
    path.write_text(yaml.safe_dump({"name": "test", "tiers": tiers, "levels": levels, "origins": ORIGINS}))


def _error(result) -> str:
    failure = next(e for e in result.all_events if e.is_step_failure)
    error = failure.step_failure_data.error
    return (error.cause or error).message


def test_an_origin_edited_in_the_landing_manifest_stops_the_plate(storage, instance):
    folder = write_demo_plate(storage.landing_path, SPEC)
    register_plate(storage, SPEC.barcode)
    instance.add_dynamic_partitions("plates", [SPEC.barcode])
    job = defs_for(storage).resolve_job_def("plate_job")
    assert job.execute_in_process(instance=instance, partition_key=SPEC.barcode, op_selection=["raw_images"]).success
    manifest = folder / "plate.yaml"
    manifest.write_text(manifest.read_text().replace("origin: internal", "origin: public"))
    result = job.execute_in_process(instance=instance, partition_key=SPEC.barcode, op_selection=["raw_images"],
                                    raise_on_error=False)
    assert not result.success
    message = _error(result)
    assert "access class changed since registration (origin: registered 'internal', now 'public'" in message
    assert "mdp reclassify" in message and f"in {manifest.resolve().as_uri()}" in message
    with pytest.raises(MdpError, match="access class changed since registration"):
        register_plate(storage, SPEC.barcode)
    assert storage.plate(SPEC.barcode).manifest.origin == "internal"  # the registry kept what was registered


def _shared(origins):
    @dg.asset(name="shared", partitions_def=plates)
    def shared(context: dg.AssetExecutionContext, storage: MdpStorage) -> dg.Output:
        register_toy_plate(storage, context.partition_key, origins[context.partition_key])
        return storage.table_output("shared", pd.DataFrame({"Metadata_Well": ["A01", "A02"], "x": [1.0, 2.0]}))

    return shared


@dg.asset(name="consensus_profiles")
def consensus(storage: MdpStorage, shared: dict[str, pd.DataFrame]) -> dg.Output:
    """Stands in for the real consensus: one table over every plate's partition."""
    return storage.table_output("consensus_profiles", pd.concat(shared.values()).groupby("Metadata_Well").median()
                                .reset_index())


def _materialize(storage, instance, assets, partition=None, selection=None):
    resources = {"storage": storage, "io_manager": PlateLevelIOManager(storage=storage, settings=StepSettings())}
    return dg.materialize(assets, partition_key=partition, instance=instance, resources=resources,
                          selection=selection, raise_on_error=False)


@pytest.fixture
def public_archive(tmp_path, instance):
    """Two plates' `shared` level and the consensus over both in a public archive: P1 public, P2 internal."""
    policy = tmp_path / "policy.yaml"
    _write_policy(policy, {"archive": _fs("archive", access="public"), "drive": _fs("drive")},
                  {"shared": [{"tier": "archive", "days": 30}, {"tier": "drive"}],
                   "consensus_profiles": [{"tier": "archive"}]})
    storage = MdpStorage(data_root=str(tmp_path / "data"), policy_file=str(policy))
    shared = _shared({"P1": "public", "P2": "internal"})
    instance.add_dynamic_partitions("plates", ["P1", "P2"])
    for plate in ("P1", "P2"):
        assert _materialize(storage, instance, [shared], plate, selection=[shared]).success
    assert _materialize(storage, instance, [shared, consensus], selection=[consensus]).success
    assert storage.store().locate("consensus_profiles", None).tier == "archive"
    return storage, shared


def test_reclassifying_a_plate_moves_and_withdraws_what_may_no_longer_stay(public_archive, instance, capsys):
    storage, shared = public_archive
    status = main(["--config", str(_config_for(storage)), "reclassify", "P1", "--origin", "collaborator-industry",
                   "--reason", "the collaborator's agreement came back: industry partner"])
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "plate P1 reclassified: public -> collaborator-industry" in printed
    # P1's own partition left the public tier for the private one its lifecycle allows, files without world access.
    located = storage.store().locate("shared", "P1")
    assert located.tier == "drive" and located.record["access"][0]["origin"] == "collaborator-industry"
    folder = stored(storage, "shared", "P1")
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o007 == 0 for p in folder.rglob("*"))
    assert not (storage.root / "archive" / "shared" / "P1").exists()
    # P2 is untouched; the consensus (P1's data inside) has no private tier in its lifecycle: withdrawn.
    assert storage.store().locate("shared", "P2").tier == "archive"
    assert storage.store().locate("consensus_profiles", None) is None
    withdrawn = storage.root / "withdrawn" / "consensus_profiles" / "__all__"
    assert (withdrawn / "table.parquet").is_file() and not (storage.root / "archive" / "consensus_profiles" / "__all__").exists()
    assert "consensus_profiles of all plates: withdrawn from 'archive'" in printed
    # Recorded: in the registry (who, when, why, from, to) and in the catalog.
    change = storage.plate("P1").reclassifications[-1]
    assert change["from"]["origin"] == "public" and change["to"]["origin"] == "collaborator-industry"
    assert "industry partner" in change["reason"] and change["who"]
    with duckdb.connect(str(storage.catalog_path), read_only=True) as con:
        rows = con.execute("SELECT plate, reason, actions FROM reclassifications").fetchall()
        tiers = dict(con.execute("SELECT partition, tier FROM stored_files WHERE asset_key = 'shared'").fetchall())
        consensus_rows = con.execute("SELECT count(*) FROM stored_files WHERE asset_key = 'consensus_profiles'").fetchone()
    assert rows[0][0] == "P1" and {a["asset"] for a in json.loads(rows[0][2])} == {"shared", "consensus_profiles"}
    assert tiers == {"P1": "drive", "P2": "archive"} and consensus_rows == (0,)
    # And in the Dagster instance: an observation on each level's page says what happened and why.
    with instance_for(load_deployment(_config_for(storage))) as deployment_instance:
        seen = deployment_instance.fetch_observations(dg.AssetKey("consensus_profiles"), limit=5).records
        meta = seen[0].asset_observation.metadata
        assert meta["reclassified_plate"].value == "P1" and "withdrawn" in meta["outcome"].value
    # The consensus made again may not go public any more: refused, naming the tier and the origin.
    result = _materialize(storage, instance, [shared, consensus], selection=[consensus])
    assert not result.success
    assert "may not be written to tier 'archive' (public): its origin is 'collaborator-industry'" in _error(result)
    storage.policy()  # and the policy, judged against everything stored, exposes nothing


def _config_for(storage):
    """An mdp.yaml whose data root and policy are this storage's."""
    root = storage.root.parent
    make_deployment(root / "deployment", data_root=str(storage.root), storage={"policy": storage.policy_file})
    return root / "deployment" / "mdp.yaml"


def test_a_reclassification_needs_a_reason_and_keeps_the_record_unchanged_without_one(public_archive):
    storage, _ = public_archive
    with pytest.raises(MdpError, match="needs a reason"):
        reclassify_plate(storage, "P1", "collaborator-academic", " ", "someone")
    assert storage.plate("P1").manifest.origin == "public" and storage.store().locate("shared", "P1").tier == "archive"


def test_a_policy_that_would_expose_stored_collaborator_data_is_refused_on_load(tmp_path, instance):
    policy = tmp_path / "policy.yaml"
    _write_policy(policy, {"drive": _fs("drive")}, {"shared": [{"tier": "drive"}]})
    storage = MdpStorage(data_root=str(tmp_path / "data"), policy_file=str(policy))
    instance.add_dynamic_partitions("plates", ["P1"])
    shared = _shared({"P1": "collaborator-academic"})
    assert _materialize(storage, instance, [shared], "P1").success
    # The same tier, re-declared public while it holds the collaborator's plate.
    _write_policy(policy, {"drive": _fs("drive", access="public")}, {"shared": [{"tier": "drive"}]})
    with pytest.raises(MdpError) as error:
        storage.policy()
    message = str(error.value)
    assert str(policy) in message and "would expose data already stored" in message
    assert "tier 'drive' holds shared of plate P1 (collaborator-academic)" in message
    with pytest.raises(MdpError, match="would expose data already stored"):
        storage.store()  # no read or write gets a store under it
    with pytest.raises(MdpError, match="tier 'drive' holds shared of plate P1"):
        defs_for(storage)


def test_identifiable_patient_inventories_stay_off_cloud_tiers_without_a_rule(tmp_path):
    cloud = {"backend": "s3", "bucket": "lab-bucket", "access": "private", "longevity": "low", "usage_speed": "instant"}
    policy = tmp_path / "policy.yaml"
    _write_policy(policy, {"cloud": cloud, "drive": _fs("drive")},
                  {"raw_images": [{"tier": "cloud", "days": 30}, {"tier": "drive"}]})
    storage = MdpStorage(data_root=str(tmp_path / "data"), policy_file=str(policy))
    register_toy_plate(storage, "PATIENTS", "internal", identifiable_patient_data=True)
    register_toy_plate(storage, "CELLS", "internal")
    store = storage.store()
    with pytest.raises(MdpError) as error:
        store.check_allowed("cloud", [storage.plate("PATIENTS").access], [100], "raw_images of PATIENTS")
    assert "raw_images of PATIENTS may not be written to tier 'cloud' (private, cloud storage): it holds " \
           "identifiable patient data" in str(error.value)
    assert "tiers.cloud.identifiable_patient_data_allowed: true" in str(error.value)
    store.check_allowed("cloud", [storage.plate("CELLS").access], [100], "raw_images of CELLS")
    store.check_allowed("drive", [storage.plate("PATIENTS").access], [100], "raw_images of PATIENTS")
    # The rule, stated in the policy, allows it.
    _write_policy(policy, {"cloud": {**cloud, "identifiable_patient_data_allowed": True}, "drive": _fs("drive")},
                  {"raw_images": [{"tier": "cloud", "days": 30}, {"tier": "drive"}]})
    storage.store().check_allowed("cloud", [storage.plate("PATIENTS").access], [100], "raw_images of PATIENTS")
