"""The service as it runs for a lab, on this machine: Postgres, an S3 server, the code server, the daemon and the
webserver as separate processes with deploy/dagster.yaml (deploy/local-stack.sh). A plate dropped into the
S3 landing prefix is picked up by the daemon's sensor and goes through every level into the object store;
the run and its materializations are in Postgres; a real browser shows the level groups and a plate's
provenance; then everything stops cleanly. Tests run in file order and share one stack."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from tools.local_stack import DATA_BUCKET, LANDING_BUCKET, LANDING_PREFIX, LocalStack, free_port

pytestmark = pytest.mark.slow

PLATE = "STACK-0001"
PLATE_LEVELS = ["raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks",
                "single_cell_features", "single_cell_crops", "single_cell_qc", "single_cell_profiles", "well_profiles",
                "profile_quality", "single_cell_embeddings", "well_embeddings", "ome_zarr_plate"]
GROUPS = ["raw", "qc_and_illumination", "masks", "single_cell", "profiles", "embeddings", "images"]
ARTIFACTS = Path(os.environ.get("MDP_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


@pytest.fixture(scope="module")
def stack():
    # Postgres runs as user postgres, which must be able to enter the state folder (pytest's tmp is 0700).
    state = Path(tempfile.mkdtemp(prefix="mdp-stack-"))
    state.chmod(0o755)
    ports = {name: free_port() for name in ("postgres", "s3", "code-server", "webserver")}
    service = LocalStack(state, ports=ports, quiet_period_seconds=2)
    service.start()
    saved = dict(os.environ)
    os.environ.update(service.environment())  # the test reads the instance as the service does
    try:
        yield service
    finally:
        service.stop()
        os.environ.clear()
        os.environ.update(saved)
        # The processes' logs stay with the screenshots, for a failure to be read after the state is gone.
        shutil.copytree(state / "logs", ARTIFACTS / "local-stack-logs", dirs_exist_ok=True)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def finished_run(stack):
    """Drop a plate into the S3 landing prefix, as an instrument's upload would, and wait for its run."""
    folder = write_demo_plate(Path(tempfile.mkdtemp(prefix="mdp-plate-")),
                              DemoPlateSpec(PLATE, rows="BC", columns=(2, 3), sites_per_well=1, image_size=160))
    client = stack.s3_client()
    for path in sorted(folder.iterdir(), key=lambda p: p.name == "plate.yaml"):  # the manifest last
        client.upload_file(str(path), LANDING_BUCKET, f"{LANDING_PREFIX}{PLATE}/{path.name}")
    shutil.rmtree(folder.parent)
    instance = dg.DagsterInstance.from_config(str(stack.dagster_home))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        runs = instance.get_runs(dg.RunsFilter(tags={"mdp/plate": PLATE}))
        if runs and runs[0].is_finished:
            return instance, runs[0]
        time.sleep(2)
    pytest.fail(f"no finished run for {PLATE} within 10 minutes; logs in {stack.state / 'logs'}")


def test_a_plate_dropped_into_s3_goes_through_every_level_into_the_object_store(stack, finished_run):
    instance, run = finished_run
    assert run.status == dg.DagsterRunStatus.SUCCESS, f"run {run.run_id} ended {run.status}; logs in {stack.state / 'logs'}"
    assert run.tags.get("dagster/sensor_name") == "new_plate_sensor"
    client = stack.s3_client()
    for level in PLATE_LEVELS:
        event = instance.get_latest_materialization_event(dg.AssetKey(level))
        assert event is not None and event.run_id == run.run_id, level
        metadata = event.asset_materialization.metadata
        if level == "corrected_images":  # the policy deletes them once their consumers are made
            assert metadata["tier"].value == "deletion"
            continue
        assert metadata["tier"].value == "object-store", level
        assert metadata["uri"].value.startswith(f"s3://{DATA_BUCKET}/active/"), level
        listed = client.list_objects_v2(Bucket=DATA_BUCKET, Prefix=f"active/{level}/{PLATE}/")
        names = {item["Key"].rsplit("/", 1)[1] for item in listed.get("Contents", [])}
        assert {"_partition.json", "ro-crate-metadata.json"} <= names, (level, names)
        assert sum(item["Size"] for item in listed["Contents"]) >= metadata["bytes"].value, level
    assert not (stack.state / "data" / "internal-drive").exists()  # nothing on a local tier


def test_the_run_and_its_materializations_are_in_postgres(stack, finished_run):
    _, run = finished_run
    environment = stack.environment()
    with psycopg2.connect(host="127.0.0.1", port=stack.ports["postgres"], dbname="dagster",
                          user=environment["DAGSTER_PG_USERNAME"], password=environment["DAGSTER_PG_PASSWORD"]) as db:
        with db.cursor() as cursor:
            cursor.execute("SELECT status FROM runs WHERE run_id = %s", (run.run_id,))
            assert cursor.fetchone() == ("SUCCESS",)
            cursor.execute("SELECT DISTINCT asset_key FROM event_logs WHERE run_id = %s AND "
                           "dagster_event_type = 'ASSET_MATERIALIZATION'", (run.run_id,))
            keys = {row[0] for row in cursor.fetchall()}
            cursor.execute("SELECT count(*) FROM jobs WHERE job_type = 'SENSOR'")
            assert cursor.fetchone()[0] >= 1  # the sensors' state lives there too (schedule storage)
    assert keys == {dg.AssetKey(level).to_string() for level in PLATE_LEVELS}


def test_a_browser_shows_the_level_groups_and_a_plates_provenance(stack, finished_run):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    def page_text() -> str:
        return driver.find_element(By.TAG_NAME, "body").text

    def dismiss_welcome() -> None:  # the UI greets a new browser with a newsletter dialog
        for button in driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            button.click()

    try:
        driver.get(f"{stack.webserver_url}/asset-groups")
        WebDriverWait(driver, 90).until(lambda _: all(group in page_text() for group in GROUPS))
        time.sleep(2)  # let the graph finish its layout before the picture
        dismiss_welcome()
        driver.save_screenshot(str(ARTIFACTS / "asset-graph.png"))

        driver.get(f"{stack.webserver_url}/assets/single_cell_profiles?view=events&partition={PLATE}")
        WebDriverWait(driver, 90).until(lambda _: "provenance" in page_text() and "[Show JSON]" in page_text())
        dismiss_welcome()
        text = page_text()
        assert f"Partition {PLATE} materialized" in text and "object-store" in text
        show = driver.find_elements(By.XPATH, "//*[normalize-space(text())='[Show JSON]']")[-1]
        driver.execute_script("arguments[0].click()", show)

        def dialog_text() -> str:  # the dialog opens empty and fills once the JSON viewer has rendered
            return "\n".join(d.text for d in driver.find_elements(By.XPATH, "//*[@role='dialog']"))

        WebDriverWait(driver, 30).until(lambda _: '"code_version"' in dialog_text())
        provenance = dialog_text()
        driver.save_screenshot(str(ARTIFACTS / "plate-provenance.png"))
    finally:
        driver.quit()
    for expected in ('"code_version"', '"software"', '"dagster": "1.13.27"', f'"partition": "{PLATE}"',
                     f'"uri": "s3://{DATA_BUCKET}/active/single_cell_features/{PLATE}"', '"data_version"'):
        assert expected in provenance, expected
    assert (ARTIFACTS / "asset-graph.png").stat().st_size > 10_000
    assert (ARTIFACTS / "plate-provenance.png").stat().st_size > 10_000


def test_the_command_line_works_on_the_services_own_data(stack, finished_run, tmp_path):
    """mdp with the service's configuration (deploy/mdp.yaml: Postgres instance, S3 tiers on 127.0.0.1) reads
    and checks the service's data, finds a corrupted S3 object, and its reprocess goes through the run queue."""
    instance, _ = finished_run
    mdp = str(Path(sys.executable).parent / "mdp")
    env = {**os.environ, **stack.environment()}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([mdp, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    shown = run("catalog", "--query", "by-tier-and-level")
    assert shown.returncode == 0, shown.stderr
    assert "object-store" in shown.stdout and "internal-drive" not in shown.stdout
    verified = run("verify")
    assert verified.returncode == 0 and "; 0 missing" in verified.stdout, verified.stdout + verified.stderr
    checked = int(verified.stdout.split()[0])
    assert checked >= 30

    victim = f"active/well_profiles/{PLATE}/table.parquet"
    stack.s3_client().put_object(Bucket=DATA_BUCKET, Key=victim, Body=b"not the parquet file it was")
    verified = run("verify")
    assert verified.returncode == 1 and f"corrupt: s3://{DATA_BUCKET}/{victim}" in verified.stderr

    planned = run("lifecycle", "--dry-run", "--as-of", "2099-01-01T00:00:00")
    assert planned.returncode == 0, planned.stderr
    assert f"raw_images/{PLATE}: would move object-store -> object-store-archive" in planned.stdout, planned.stdout

    submitted = run("reprocess", PLATE, "--no-wait")
    assert submitted.returncode == 0, submitted.stderr
    assert "well_profiles (stored files corrupt (found by mdp verify))" in submitted.stdout
    run_id = submitted.stdout.split("run ")[-1].split()[0]
    events = [e.dagster_event.event_type for e in instance.all_logs(run_id) if e.is_dagster_event]
    assert dg.DagsterEventType.RUN_ENQUEUED in events, "it went through the run queue"
    assert instance.get_run_by_id(run_id).tags["mdp/command"] == "reprocess"
    deadline = time.monotonic() + 300
    while not instance.get_run_by_id(run_id).is_finished and time.monotonic() < deadline:
        time.sleep(2)
    assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS
    verified = run("verify")
    assert verified.returncode == 0, verified.stderr  # the level was made again and the catalog says so


def test_the_stack_stops_cleanly(stack):
    pids = stack.status()
    assert all(pids.values()), pids
    ended = stack.stop()
    assert ended == {name: "stopped" for name in pids}, ended
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert all(stack.pid(name) is None for name in pids)
