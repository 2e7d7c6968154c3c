"""The Dagster UI as a lab member meets it, for tests: `dagster-webserver` and `dagster-daemon` on 127.0.0.1 over
a deployment in a temporary folder with registered demo plates (the instance `mdp config instance` writes:
run queue, limits), and a small client for the webserver's GraphQL API, the one the UI itself calls."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mdp_assets.config import Deployment
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.services import runs
from mdp_assets.services.instance import instance_config
from mdp_assets.services.registration import add_partitions, register_plate
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import REPOSITORY, make_deployment
from tools.local_stack import _signals_not_ignored, free_port

LOCATION, REPOSITORY_NAME, ASSET_JOB = "mdp", "__repository__", "__ASSET_JOB"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}

LAUNCH_RUN = """mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message } ... on PythonError { stack } } }"""
LAUNCH_BACKFILL = """mutation Backfill($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } ... on PythonError { stack } } }"""
RUN = """query Run($id: ID!) { runOrError(runId: $id) { ... on Run { runId status assetSelection { path }
  assetCheckSelection { assetKey { path } name } } } }"""
BACKFILL = """query Backfill($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { id status numPartitions error { message } runs(limit: 100) { runId status tags { key value } } }
  ... on Error { message } } }"""
ASSET_NODES = """{ assetNodes { assetKey { path } isPartitioned dependencyKeys { path } groupName
  assetChecksOrError { ... on AssetChecks { checks { name } } } } }"""
LOCATION_STATUS = """{ workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def demo_plates(count: int) -> list[DemoPlateSpec]:
    """Small demo plates (8 wells, 1 site, 128 px): every level in seconds."""
    return [DemoPlateSpec(f"UI-{i:04d}", rows="BC", columns=(2, 3, 4, 5), sites_per_well=1, image_size=128,
                          cells_per_site=8, seed=i) for i in range(1, count + 1)]


def graphql_error(payload: dict[str, Any]) -> str:
    return json.dumps(payload.get("errors"), indent=1)[:4000]


@dataclass
class UiServer:
    """The webserver and daemon of one deployment, each its own process group, stopped by its PID."""

    folder: Path
    deployment: Deployment
    plates: list[str]
    port: int = 0
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def prepare(cls, folder: Path, plate_count: int = 2) -> "UiServer":
        deployment = make_deployment(folder, execution={"executor": "in_process", "max_concurrent_runs": 2})
        storage = MdpStorage.from_deployment(deployment)
        assert deployment.dagster_home is not None
        deployment.dagster_home.mkdir(parents=True, exist_ok=True)
        (deployment.dagster_home / "dagster.yaml").write_text(yaml.safe_dump(instance_config(deployment)))
        plates = []
        for spec in demo_plates(plate_count):
            write_demo_plate(storage.landing_path, spec)
            register_plate(storage, spec.barcode)
            plates.append(spec.barcode)
        with runs.instance_for(deployment) as instance:
            add_partitions(instance, plates)
        return cls(folder, deployment, plates)

    def environment(self) -> dict[str, str]:
        env = runs.environment(self.deployment)
        # The code server imports this checkout's package (the venv's editable install may point elsewhere).
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPOSITORY), env.get("PYTHONPATH", "")] if p)
        return env

    def start(self, timeout_s: float = 180, port: int | None = None) -> None:
        self.port = port or free_port()
        workspace = str(runs.workspace_file(self.deployment))
        logs = self.folder / "logs"
        logs.mkdir(exist_ok=True)
        commands = {
            "webserver": [str(runs.BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1", "-p", str(self.port)],
            "daemon": [str(runs.BIN / "dagster-daemon"), "run", "-w", workspace],
        }
        for name, command in commands.items():
            # Started from a backgrounded shell (make, CI) they would otherwise ignore SIGTERM (local_stack.py).
            with open(logs / f"{name}.log", "ab") as log, _signals_not_ignored():
                self.processes[name] = subprocess.Popen(command, env=self.environment(), stdout=log,
                                                        stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}; see {logs / (name + '.log')}")
            try:
                entries = self.query(LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
                loaded = [e for e in entries if e["locationOrLoadError"]
                          and e["locationOrLoadError"]["__typename"] == "RepositoryLocation"]
                failed = [e for e in entries if e["locationOrLoadError"]
                          and e["locationOrLoadError"]["__typename"] == "PythonError"]
                if failed:
                    raise RuntimeError(f"the code location failed to load: {failed[0]['locationOrLoadError']['message']}")
                if loaded:
                    return
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(1)
        raise RuntimeError(f"the webserver did not serve the location within {timeout_s:.0f} s; logs in {logs}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def keep_logs(self, destination: Path) -> None:
        shutil.copytree(self.folder / "logs", destination, dirs_exist_ok=True)

    # -- the GraphQL API ---------------------------------------------------------------------------------
    def query(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.url}/graphql", method="POST",
                                         data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            payload = json.load(response)
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {graphql_error(payload)}")
        return payload["data"]

    def asset_nodes(self) -> list[dict[str, Any]]:
        return self.query(ASSET_NODES)["assetNodes"]

    def launch_run(self, assets: list[str], checks: list[tuple[str, str]], partition: str | None) -> str:
        """A run of the asset job with these assets and checks selected, as the UI's Materialize sends it."""
        params = {
            "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY_NAME,
                         "pipelineName": ASSET_JOB, "assetSelection": [{"path": [a]} for a in assets],
                         "assetCheckSelection": [{"assetKey": {"path": [a]}, "name": n} for a, n in checks]},
            "mode": "default",
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}] if partition else []},
        }
        result = self.query(LAUNCH_RUN, {"params": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            raise AssertionError(f"launchRun {assets} {checks} {partition}: {result['__typename']}: "
                                 f"{result.get('message') or result.get('stack')}")
        return result["run"]["runId"]

    def launch_backfill(self, assets: list[str], partitions: list[str]) -> str:
        params = {"assetSelection": [{"path": [a]} for a in assets], "partitionNames": partitions, "fromFailure": False}
        result = self.query(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise AssertionError(f"launchPartitionBackfill: {result['__typename']}: "
                                 f"{result.get('message') or result.get('stack')}")
        return result["backfillId"]

    def wait_run(self, run_id: str, timeout_s: float = 300) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            run = self.query(RUN, {"id": run_id})["runOrError"]
            if run.get("status") in FINISHED:
                return run
            time.sleep(1)
        raise AssertionError(f"run {run_id} not finished within {timeout_s:.0f} s")

    def wait_backfill(self, backfill_id: str, timeout_s: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            backfill = self.query(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
            if backfill.get("status") not in (None, "REQUESTED", "CANCELING"):
                return backfill
            time.sleep(2)
        raise AssertionError(f"backfill {backfill_id} not finished within {timeout_s:.0f} s")


# -- a real browser ------------------------------------------------------------------------------------
class Browser:
    """Debian's headless Chromium driven by selenium, with the few moves the UI tests make."""

    def __init__(self, base_url: str, screenshots: Path):
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000"):
            options.add_argument(argument)
        self.driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                                       options=options)
        self.base_url = base_url
        self.screenshots = screenshots
        screenshots.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self.driver.quit()

    def open(self, path: str) -> None:
        self.driver.get(self.base_url + path)

    def text(self) -> str:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.TAG_NAME, "body").text

    def dialog_text(self) -> str:
        from selenium.webdriver.common.by import By

        return "\n".join(d.text for d in self.driver.find_elements(By.XPATH, "//*[@role='dialog']"))

    def wait_for(self, condition, timeout_s: float = 90, what: str = "") -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout_s, poll_frequency=0.5).until(lambda _: condition())
        except Exception as exc:
            self.screenshot("timeout")
            raise AssertionError(f"timed out waiting for {what}; page:\n{self.text()[:3000]}") from exc

    def wait_for_text(self, *texts: str, timeout_s: float = 90) -> None:
        self.wait_for(lambda: all(t in self.text() for t in texts), timeout_s, f"{texts}")

    def button(self, label: str, within_dialog: bool = False, starts_with: bool = False):
        """The visible button whose text is `label` (waits for it)."""
        from selenium.webdriver.common.by import By

        scope = "//*[@role='dialog']" if within_dialog else ""
        test = f"starts-with(normalize-space(), '{label}')" if starts_with else f"normalize-space()='{label}'"

        def found():
            buttons = [b for b in self.driver.find_elements(By.XPATH, f"{scope}//button[{test}]") if b.is_displayed()]
            return buttons[0] if buttons else None

        return self.wait_for(found, what=f"button {label!r}")

    def on_top(self, xpath: str):
        """The first element matching `xpath` that is not covered by another (a dialog's backdrop), or None."""
        from selenium.webdriver.common.by import By

        for element in self.driver.find_elements(By.XPATH, xpath):
            if element.is_displayed() and self.driver.execute_script(
                    "const r = arguments[0].getBoundingClientRect();"
                    "const top = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);"
                    "return top !== null && (top === arguments[0] || arguments[0].contains(top));", element):
                return element
        return None

    def click(self, element) -> None:
        self.driver.execute_script("arguments[0].click()", element)

    def dismiss_welcome(self) -> None:
        """A new browser may be greeted by a newsletter dialog (the instance's `nux: enabled: false` hides it)."""
        from selenium.webdriver.common.by import By

        for button in self.driver.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            button.click()

    def screenshot(self, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path


BACKFILLS = """{ partitionBackfillsOrError(limit: 50) { ... on PartitionBackfills { results { id } } } }"""


def backfill_ids(server: UiServer) -> set[str]:
    return {b["id"] for b in server.query(BACKFILLS)["partitionBackfillsOrError"]["results"]}


START_SENSOR = """mutation Start($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
  __typename ... on Sensor { name sensorState { status } } ... on Error { message } } }"""
STOP_SENSOR = """mutation Stop($id: String!, $selectorId: String!) { stopSensor(id: $id, jobSelectorId: $selectorId) {
  __typename ... on StopSensorMutationResult { instigationState { status } } ... on Error { message } } }"""
SENSOR = """query Sensor($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
  ... on Sensor { name description minIntervalSeconds sensorState { id selectorId status } } ... on Error { message } } }"""


def sensor_selector(name: str) -> dict[str, str]:
    return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY_NAME, "sensorName": name}
