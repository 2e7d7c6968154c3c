"""Everything launchable from the Dagster UI works: `dagster-webserver` and `dagster-daemon` on 127.0.0.1 over a
deployment with two demo plates, driven through the webserver's GraphQL API as the UI drives it. A backfill of
two plates for every level runs through the queue and finishes; then every asset key alone (one plate where it
is partitioned), with the checks the UI's Materialize adds, succeeds; and every asset check alone succeeds.
Then a person's moves in headless Chromium: materialize one asset of one plate, backfill both plates for every
level, look at a plate map. The tests share one server and run in file order."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pytest

from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.ui_server import Browser, UiServer, backfill_ids

pytestmark = pytest.mark.slow

ARTIFACTS = Path(os.environ.get("MDP_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
PLATE_LEVELS = ["raw_images", "image_qc", "illumination_functions", "corrected_images", "segmentation_masks",
                "single_cell_features", "single_cell_crops", "single_cell_qc", "single_cell_profiles", "well_profiles",
                "profile_quality", "single_cell_embeddings", "well_embeddings", "ome_zarr_plate"]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    server = UiServer.prepare(tmp_path_factory.mktemp("ui"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        server.keep_logs(ARTIFACTS / "ui-logs")


def toposorted(nodes: list[dict]) -> list[dict]:
    by_key = {n["assetKey"]["path"][0]: n for n in nodes}
    done: list[str] = []

    def visit(key: str) -> None:
        if key in done:
            return
        for dep in by_key[key]["dependencyKeys"]:
            visit(dep["path"][0])
        done.append(key)

    for key in sorted(by_key):
        visit(key)
    return [by_key[k] for k in done]


def checks_of(node: dict) -> list[tuple[str, str]]:
    return [(node["assetKey"]["path"][0], c["name"]) for c in node["assetChecksOrError"]["checks"]]


def materialized(instance: dg.DagsterInstance, run_id: str) -> set[tuple[str, str | None]]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    return {(r.event_log_entry.asset_materialization.asset_key.to_user_string(),
             r.event_log_entry.asset_materialization.partition) for r in records}


def check_evaluations(instance: dg.DagsterInstance, run_id: str) -> dict[tuple[str, str], bool]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    found = {}
    for record in records:
        evaluation = record.event_log_entry.dagster_event.asset_check_evaluation_data
        found[(evaluation.asset_key.to_user_string(), evaluation.check_name)] = evaluation.passed
    return found


@pytest.fixture(scope="module")
def instance(ui):
    with dg.DagsterInstance.from_config(str(ui.deployment.dagster_home)) as opened:
        yield opened


def test_a_backfill_of_two_plates_for_every_level_runs_and_finishes(ui, instance):
    backfill_id = ui.launch_backfill(PLATE_LEVELS, ui.plates)
    backfill = ui.wait_backfill(backfill_id)
    assert backfill["status"] == "COMPLETED_SUCCESS", backfill
    assert backfill["error"] is None and backfill["numPartitions"] == 2
    by_plate = {next(t["value"] for t in run["tags"] if t["key"] == "dagster/partition"): run for run in backfill["runs"]}
    assert sorted(by_plate) == ui.plates and all(run["status"] == "SUCCESS" for run in backfill["runs"]), backfill
    made = set().union(*(materialized(instance, run["runId"]) for run in backfill["runs"]))
    assert made == {(level, plate) for level in PLATE_LEVELS for plate in ui.plates}
    # The runs went through the instance's queue (the limits of mdp.yaml's execution: apply).
    for run in backfill["runs"]:
        events = [e.dagster_event.event_type for e in instance.all_logs(run["runId"]) if e.is_dagster_event]
        assert dg.DagsterEventType.RUN_ENQUEUED in events


def test_every_asset_alone_materializes_with_its_checks(ui, instance):
    nodes = toposorted(ui.asset_nodes())
    assert {n["assetKey"]["path"][0] for n in nodes} == {*PLATE_LEVELS, "consensus_profiles", "storage_costs"}
    plate = ui.plates[0]
    for node in nodes:
        key = node["assetKey"]["path"][0]
        partition = plate if node["isPartitioned"] else None
        run_id = ui.launch_run([key], checks_of(node), partition)
        run = ui.wait_run(run_id)
        assert run["status"] == "SUCCESS", (key, run_id, ui.folder / "logs")
        assert [a["path"] for a in run["assetSelection"]] == [[key]]
        assert materialized(instance, run_id) == {(key, partition)}
        evaluated = check_evaluations(instance, run_id)
        assert set(evaluated) == set(checks_of(node)), key
        assert all(evaluated.values()), (key, evaluated)


def test_every_asset_check_runs_alone(ui, instance):
    nodes = ui.asset_nodes()
    own = [(node, check) for node in nodes for check in checks_of(node) if check[1] != "stored_files_intact"]
    assert {check for _, check in own} == {("image_qc", "qc_pass_fraction"), ("image_qc", "no_blurred_images"),
                                           ("image_qc", "no_saturated_images"),
                                           ("segmentation_masks", "no_empty_or_failed_wells"),
                                           ("single_cell_qc", "flagged_fraction"), ("profile_quality", "min_map"),
                                           ("raw_images", "platemap_matches_images")}
    for node, check in own:
        run_id = ui.launch_run([], [check], ui.plates[1])
        assert ui.wait_run(run_id)["status"] == "SUCCESS", check
        assert check_evaluations(instance, run_id) == {check: True}
        assert materialized(instance, run_id) == set()
    # The storage verification of every level in one run, and of one level alone.
    every = [(n["assetKey"]["path"][0], "stored_files_intact") for n in nodes]
    for selection in (every, every[:1]):
        run_id = ui.launch_run([], selection, None)
        assert ui.wait_run(run_id)["status"] == "SUCCESS"
        assert check_evaluations(instance, run_id) == {check: True for check in selection}


def test_a_person_materializes_backfills_and_sees_the_plate_map_in_a_browser(ui, instance, tmp_path):
    """Headless Chromium: materialize one asset of one plate from its asset page, backfill two plates for every
    level from plate_job's page, wait until both succeed, and open a plate map. Screenshots in tmp_path."""
    from selenium.webdriver.common.by import By

    plate = ui.plates[0]
    browser = Browser(ui.url, tmp_path)
    try:
        # 1. raw_images of one plate, from its asset page.
        before = {r.run_id for r in instance.get_runs(dg.RunsFilter(tags={"dagster/partition": plate}))}
        browser.open("/assets/raw_images")
        browser.dismiss_welcome()
        browser.click(browser.button("Materialize…"))
        for confirm in browser.driver.find_elements(By.XPATH, "//button[normalize-space()='Confirm']"):
            confirm.click()  # "upstream not materialized" (not the case for raw_images)
        browser.wait_for(lambda: "Launch runs to materialize raw_images" in browser.dialog_text(), what="the dialog")
        browser.click(browser.driver.find_element(By.XPATH, "//*[@role='dialog']//*[contains(text(), 'Select a partition')]"))
        # The option in the partition list (not the page's own mention of the plate behind the dialog).
        option = browser.wait_for(lambda: browser.on_top(f"//span[normalize-space()='{plate}']"),
                                  what=f"the option {plate}")
        option.click()
        browser.wait_for(lambda: "1 partition" in browser.dialog_text(), what="one partition selected")
        browser.screenshot("1-materialize-dialog")
        browser.click(browser.button("Launch 1 run", within_dialog=True))
        new_run = browser.wait_for(lambda: next((r for r in instance.get_runs(dg.RunsFilter(
            tags={"dagster/partition": plate})) if r.run_id not in before), None), what="the launched run")
        assert ui.wait_run(new_run.run_id)["status"] == "SUCCESS"
        assert materialized(instance, new_run.run_id) == {("raw_images", plate)}
        browser.open(f"/assets/raw_images?view=events&partition={plate}")
        browser.wait_for_text(f"Partition {plate} materialized in run {new_run.run_id[:8]}", "internal-drive")
        browser.screenshot("2-materialized")

        # 2. Every level of both plates: plate_job's "Materialize all…", all partitions, a backfill.
        known = backfill_ids(ui)
        browser.open("/locations/mdp/jobs/plate_job")
        browser.click(browser.button("Materialize all…"))
        for confirm in browser.driver.find_elements(By.XPATH, "//button[normalize-space()='Confirm']"):
            confirm.click()
        browser.wait_for(lambda: f"Launch runs to materialize {len(PLATE_LEVELS)} assets" in browser.dialog_text(), what="the dialog")
        browser.click(browser.button("All", within_dialog=True))
        browser.wait_for(lambda: "2 partitions" in browser.dialog_text(), what="two partitions selected")
        assert all(p in browser.dialog_text() for p in ui.plates)
        browser.screenshot("3-backfill-dialog")
        browser.click(browser.button("Launch backfill", within_dialog=True))
        backfill_id = browser.wait_for(lambda: next(iter(backfill_ids(ui) - known), None), what="the backfill")
        backfill = ui.wait_backfill(backfill_id)
        assert backfill["status"] == "COMPLETED_SUCCESS" and len(backfill["runs"]) == 2, backfill
        assert all(run["status"] == "SUCCESS" for run in backfill["runs"])
        made = set().union(*(materialized(instance, run["runId"]) for run in backfill["runs"]))
        assert made == {(level, p) for level in PLATE_LEVELS for p in ui.plates}
        browser.open(f"/runs/b/{backfill_id}")
        browser.wait_for_text("2 partitions", "Succeeded", "100% completed")
        browser.screenshot("4-backfill-succeeded")

        # 3. The plate map of a plate (cells per well, in segmentation_masks' metadata): in place, and the figure.
        browser.open(f"/assets/segmentation_masks?view=events&partition={plate}")
        browser.wait_for_text(f"Partition {plate} materialized", "plate_map", "cells per well:")
        thumbnail = browser.wait_for(lambda: next(iter(browser.driver.find_elements(
            By.XPATH, "//td[normalize-space()='plate_map']/following-sibling::td//img[@alt='cells per well']")), None),
            what="the plate map shown in place")
        browser.wait_for(lambda: int(thumbnail.get_attribute("naturalWidth") or 0) > 0, what="the thumbnail decoded")
        shown = thumbnail.rect
        browser.screenshot("5-plate-map-in-place")
        show = browser.driver.find_element(By.XPATH, "//td[normalize-space()='plate_map_figure']/following-sibling::td"
                                                     "//*[normalize-space(text())='[Show Markdown]']")
        browser.click(show)
        figure = browser.wait_for(lambda: next(iter(browser.driver.find_elements(
            By.XPATH, f"//*[@role='dialog']//img[@alt='{plate}: cells (nuclei) per well']")), None),
            what="the plate map figure")
        browser.wait_for(lambda: int(figure.get_attribute("naturalWidth") or 0) > 300, what="the figure decoded")
        rendered = figure.rect
        sources = {"plate_map": thumbnail.get_attribute("src"), "plate_map_figure": figure.get_attribute("src")}
        browser.screenshot("6-plate-map-figure")
    finally:
        browser.close()
    assert shown["width"] == 12 * shown["height"] / 8 and shown["width"] >= 12 * 4  # 96 wells, in plate layout
    assert rendered["width"] > 300 and rendered["height"] > 150
    records = instance.fetch_materializations(dg.AssetRecordsFilter(
        asset_key=dg.AssetKey("segmentation_masks"), asset_partitions=[plate]), limit=1).records
    metadata = records[0].asset_materialization.metadata
    for key, src in sources.items():  # the pictures of this plate's latest materialization
        markdown = metadata[key].value
        assert src == markdown[markdown.index("](") + 2:markdown.index(")", markdown.index("]("))], key
    for name in ("1-materialize-dialog", "2-materialized", "3-backfill-dialog", "4-backfill-succeeded",
                 "5-plate-map-in-place", "6-plate-map-figure"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000, name


def test_turning_on_the_reprocess_sensor_remakes_the_damaged_level_through_the_queue(ui, instance):
    """The documented UI action for "re-make what is out of date": Automation > reprocess_stale_levels > on."""
    from mdp_assets_tests.conftest import stored
    from mdp_assets_tests.ui_server import SENSOR, START_SENSOR, STOP_SENSOR, sensor_selector

    selector = sensor_selector("reprocess_stale_levels")
    sensor = ui.query(SENSOR, {"selector": selector})["sensorOrError"]
    assert sensor["sensorState"]["status"] == "STOPPED" and "stale levels" in sensor["description"]
    plate = ui.plates[1]
    victim = stored(MdpStorage.from_deployment(ui.deployment), "raw_images", plate) / "table.parquet"
    victim.write_bytes(victim.read_bytes()[:-20] + b"\0" * 20)  # a damaged file on the drive
    run_id = ui.launch_run([], [("raw_images", "stored_files_intact")], None)  # the check finds and flags it
    ui.wait_run(run_id)
    assert check_evaluations(instance, run_id) == {("raw_images", "stored_files_intact"): False}

    known = {r.run_id for r in instance.get_runs(dg.RunsFilter(tags={"mdp/command": "reprocess"}))}
    started = ui.query(START_SENSOR, {"selector": selector})["startSensor"]
    assert started["__typename"] == "Sensor" and started["sensorState"]["status"] == "RUNNING", started
    try:
        deadline = time.monotonic() + 180
        while not (runs := [r for r in instance.get_runs(dg.RunsFilter(tags={"mdp/command": "reprocess"}))
                            if r.run_id not in known]) and time.monotonic() < deadline:
            time.sleep(2)
        assert len(runs) == 1, "the sensor requested one run"
        run = ui.wait_run(runs[0].run_id)
        assert run["status"] == "SUCCESS"
        assert runs[0].tags["mdp/plate"] == plate and "raw_images: stored files corrupt" in runs[0].tags["mdp/reasons"]
        # Exactly the damaged level; it came back identical, so nothing below it is out of date.
        assert materialized(instance, runs[0].run_id) == {("raw_images", plate)}
    finally:
        state = ui.query(SENSOR, {"selector": selector})["sensorOrError"]["sensorState"]
        ui.query(STOP_SENSOR, {"id": state["id"], "selectorId": state["selectorId"]})
    run_id = ui.launch_run([], [("raw_images", "stored_files_intact")], None)
    ui.wait_run(run_id)
    assert check_evaluations(instance, run_id) == {("raw_images", "stored_files_intact"): True}
