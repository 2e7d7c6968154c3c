"""Shared fixtures. Real data is read from ../shared/realdata (read-only); anything changed is copied first."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mdp_assets.config import Deployment, load_deployment
from mdp_assets.engines.cellprofiler.outputs import file_list
from mdp_assets.storage.partitions import partition_key
from mdp_assets.storage.resource import MdpStorage

REPOSITORY = Path(__file__).resolve().parents[1]
REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"
NF1_IMAGES = REALDATA / "nf1-plate2-cytodataframe" / "NF1_cellpainting_data_shrunken" / "Plate_2_images"
NF1_PLATEMAP = REALDATA / "nf1-schwann-metadata" / "0.download_data" / "metadata" / "platemap_NF1_plate2.csv"
OME_SAMPLES = REALDATA / "ome-artificial-ometiff" / "tests" / "data" / "ome-artificial-5d-datasets"


def pytest_configure(config: pytest.Config) -> None:
    if not REALDATA.is_dir():
        raise pytest.UsageError(f"real test data not found at {REALDATA} (../shared/realdata beside the project)")


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3 HTTP server (moto) on 127.0.0.1, for the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


def s3_policy_storage(tmp_path: Path, s3_endpoint: str):
    """Storage on the shipped S3 policy, its cloud tier a fresh bucket of the test's S3 server: (storage, an S3
    client of that server, the bucket)."""
    import uuid

    import boto3

    from mdp_assets.storage.policy import shipped_policy

    bucket = f"mdp-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    policy = yaml.safe_load(shipped_policy("s3").read_text())
    policy["tiers"]["cloud"].update(bucket=bucket, endpoint_url=s3_endpoint, region="us-east-1")
    path = tmp_path / "s3.yaml"
    path.write_text(yaml.safe_dump(policy))
    return MdpStorage(data_root=str(tmp_path / "data"), policy_file=str(path)), client, bucket


def make_deployment(folder: Path, **sections) -> Deployment:
    """A deployment whose mdp.yaml is in `folder` (data in folder/data, the instance in folder/dagster_home),
    the built-in engine, and the sections given (merged over those)."""
    config = {"data_root": "data", "dagster_home": "dagster_home", "engine": {"kind": "builtin"},
              "execution": {"executor": "in_process"}}
    for name, value in sections.items():
        config[name] = {**config.get(name, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mdp.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return load_deployment(path)


def defs_for(storage: MdpStorage, **kwargs) -> dg.Definitions:
    """The definitions of the test deployment a storage belongs to (its mdp.yaml is beside the data root)."""
    from mdp_assets.definitions import build_definitions

    folder = Path(storage.data_root).parent
    deployment = load_deployment(folder / "mdp.yaml") if (folder / "mdp.yaml").exists() else make_deployment(folder)
    return build_definitions(deployment, storage=storage, **kwargs)


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return make_deployment(tmp_path)


@pytest.fixture
def storage(deployment: Deployment) -> MdpStorage:
    return MdpStorage.from_deployment(deployment)


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def stored(storage: MdpStorage, asset: str, partition: str | None) -> Path:
    """The folder of a stored partition, in whichever (local) tier the storage policy put it."""
    found = storage.store().locate(asset, partition)
    assert found is not None, f"{asset} of {partition} is not stored"
    return storage.tier(found.tier).folder(partition_key(asset, partition))


def write_manifest(folder: Path, **fields) -> Path:
    path = folder / "plate.yaml"
    path.write_text(yaml.safe_dump(fields, sort_keys=False))
    return path


@pytest.fixture
def nf1_plate(storage: MdpStorage) -> str:
    """The real NF1 plate 2 images, as a plate folder in a temporary landing zone, with a manifest."""
    folder = storage.landing_path / "Plate_2"
    shutil.copytree(NF1_IMAGES, folder)
    shutil.copy(NF1_PLATEMAP, folder / "platemap.csv")
    write_manifest(
        folder,
        barcode="Plate_2",
        origin="public",
        platemap="platemap.csv",
        naming_scheme="nf1",
        nuclei_channel="DAPI",
        expected_image_count=15,
        treatment_column="genotype",
    )
    return "Plate_2"


def register_toy_plate(storage: MdpStorage, barcode: str, origin: str = "internal", identifiable_patient_data: bool = False,
                       released: bool = False) -> None:
    """Record a plate in the registry as registration would, without a plate folder (for toy assets)."""
    import pandas as pd

    from mdp_assets.plates.manifest import PlateManifest
    from mdp_assets.plates.registry import Plate

    manifest = PlateManifest(barcode=barcode, origin=origin, identifiable_patient_data=identifiable_patient_data,
                             released=released, platemap="platemap.csv", naming_scheme="phenix", expected_image_count=1)
    storage.registry().write(Plate(manifest, pd.DataFrame({"Metadata_Well": ["A01", "A02"]})))


def run_plate(storage: MdpStorage, instance: dg.DagsterInstance, barcode: str, raise_on_error: bool = True):
    """Register a landing-zone plate as intake does and run plate_job over it in process: (result, the levels
    materialized, the asset checks evaluated by name)."""
    from mdp_assets.services.registration import register_plate

    register_plate(storage, barcode)
    instance.add_dynamic_partitions("plates", [barcode])
    job = defs_for(storage).resolve_job_def("plate_job")
    result = job.execute_in_process(instance=instance, partition_key=barcode, raise_on_error=raise_on_error)
    made = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    return result, made, {c.check_name: c for c in result.get_asset_check_evaluations()}


def table_of(storage: MdpStorage, asset: str, plate: str):
    """The stored Parquet table of one plate's level."""
    import pandas as pd

    return pd.read_parquet(stored(storage, asset, plate) / "table.parquet")


def good_and_bad_groups(images: list[Path], tmp_path: Path) -> list[dict]:
    """Two CellProfiler groups over the same images: "good" as they are, "bad" with its first image not a TIFF."""
    bad = tmp_path / "bad"
    bad.mkdir()
    for image in images:
        shutil.copy(image, bad / image.name)
    (bad / images[0].name).write_bytes(b"not a tiff")
    return [
        {"id": "good", "output_dir": str(tmp_path / "good"), "file_list": str(file_list(images, tmp_path / "good.txt"))},
        {"id": "bad", "output_dir": str(tmp_path / "badout"),
         "file_list": str(file_list(sorted(bad.glob("*.tif")), tmp_path / "bad.txt"))},
    ]
