"""A landing zone on S3: the sensor lists the prefix, mirrors and validates, and raw_images reads the mirror."""

import hashlib
import uuid

import boto3
import dagster as dg
import pandas as pd

from mdp_assets.config import IntakeSettings, StepSettings
from mdp_assets.defs.plates.sensors import new_plate_sensor
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import defs_for, stored, NF1_IMAGES, NF1_PLATEMAP


def _bucket_state(client, bucket):
    listed = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted((o["Key"], o["ETag"], o["Size"]) for o in listed)


def test_plate_under_an_s3_prefix_flows_in(tmp_path, s3_endpoint, s3_credentials, instance):
    bucket = f"landing-{uuid.uuid4().hex[:8]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    images = sorted(NF1_IMAGES.glob("*.tif"))
    for path in images[:10]:
        client.upload_file(str(path), bucket, f"incoming/Plate_2/{path.name}")
    client.upload_file(str(NF1_PLATEMAP), bucket, "incoming/Plate_2/platemap.csv")
    manifest = (
        "barcode: Plate_2\norigin: public\nplatemap: platemap.csv\nnaming_scheme: nf1\n"
        "nuclei_channel: DAPI\nexpected_image_count: 15\ntreatment_column: genotype\n"
    )
    client.put_object(Bucket=bucket, Key="incoming/Plate_2/plate.yaml", Body=manifest.encode())

    storage = MdpStorage(data_root=str(tmp_path / "data"), landing_s3_bucket=bucket, landing_s3_prefix="incoming",
                         s3_endpoint_url=s3_endpoint, s3_region="us-east-1")

    def tick(cursor=None):
        context = dg.build_sensor_context(instance=instance, cursor=cursor,
                                          resources={"storage": storage, "intake": IntakeSettings(quiet_period_seconds=0),
                                                     "settings": StepSettings()})
        return new_plate_sensor(context)

    waiting = tick()
    assert not waiting.run_requests and "10 of 15 images so far" in waiting.skip_reason.skip_message
    for path in images[10:]:
        client.upload_file(str(path), bucket, f"incoming/Plate_2/{path.name}")
    before = _bucket_state(client, bucket)
    ready = tick(waiting.cursor)
    assert [r.partition_key for r in ready.run_requests] == ["Plate_2"]
    assert _bucket_state(client, bucket) == before, "the bucket is never written"

    instance.add_dynamic_partitions("plates", ["Plate_2"])
    defs = defs_for(storage)
    result = defs.resolve_job_def("plate_job").execute_in_process(
        instance=instance, partition_key="Plate_2", op_selection=["raw_images"])
    assert result.success
    raw = pd.read_parquet(stored(storage, "raw_images", "Plate_2") / "table.parquet")
    assert len(raw) == 15
    assert raw["source_uri"].str.startswith(f"s3://{bucket}/incoming/Plate_2/").all()
    local = {p.name: p for p in images}
    for row in raw.itertuples():
        assert row.sha256 == hashlib.sha256(local[row.file_name].read_bytes()).hexdigest()
