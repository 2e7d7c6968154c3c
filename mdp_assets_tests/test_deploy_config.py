"""deploy/: the compose file, instance configs, Helm values and ECS task definitions parse, use only pinned
images, keep secrets out of files, and every environment variable they (or the code locations) read is
documented in deploy/README.md. The Kubernetes and ECS code locations load, and the CellProfiler pod is
built per group of wells by dagster-k8s's own pod builder the way a cluster would receive it."""

import json
import re
from pathlib import Path

import dagster as dg
import pytest
import yaml

from mdp_assets.engines.cellprofiler.containers import group_labels
from mdp_assets_tests.conftest import REPOSITORY

DEPLOY = REPOSITORY / "deploy"
README = (DEPLOY / "README.md").read_text()
DOCUMENTED = set(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \|", README, flags=re.MULTILINE))


def _yaml(name: str) -> dict:
    return yaml.safe_load((DEPLOY / name).read_text())


def _env_in_instance(config: dict) -> set[str]:
    found = set()

    def walk(node):
        if isinstance(node, dict):
            if set(node) == {"env"}:
                found.add(node["env"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def test_every_variable_the_deployment_reads_is_documented():
    compose_text = (DEPLOY / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", compose_text))
    compose = yaml.safe_load(compose_text)
    for service in compose["services"].values():
        environment = service.get("environment") or {}
        used |= {name for name in environment if name.isupper()}
    used |= _env_in_instance(_yaml("dagster.yaml")) | _env_in_instance(_yaml("ecs/dagster.yaml"))
    helm = _yaml("helm/values.yaml")
    for deployment in helm["dagster-user-deployments"]["deployments"]:
        used |= {item["name"] for item in deployment["env"]}
    for task in (DEPLOY / "ecs").glob("mdp-*.json"):
        container = json.loads(task.read_text())["containerDefinitions"][0]
        used |= {item["name"] for item in container["environment"] + container.get("secrets", [])}
    code = "\n".join(p.read_text() for p in (REPOSITORY / "mdp_assets").rglob("*.py"))
    used |= set(re.findall(r"EnvVar(?:\.int)?\(\"([A-Z][A-Z0-9_]+)\"\)", code))
    used -= {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD",
             "MC_HOST_store"}  # the images' own variables, set from documented ones
    assert {"DAGSTER_PG_PASSWORD", "MDP_LANDING_BUCKET", "MDP_DATA_VOLUME_CLAIM", "MDP_ECS_CLUSTER"} <= used
    assert used - DOCUMENTED == set()


def test_secrets_only_come_from_the_environment():
    compose = _yaml("docker-compose.yml")
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in ("PASSWORD", "SECRET", "ACCESS_KEY")):
                assert str(value).startswith("${"), (name, key)
    for instance in ("dagster.yaml", "ecs/dagster.yaml"):
        assert _yaml(instance)["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
        assert _yaml(instance)["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    for task in (DEPLOY / "ecs").glob("mdp-*.json"):
        container = json.loads(task.read_text())["containerDefinitions"][0]
        assert not any("PASSWORD" in item["name"] or "SECRET" in item["name"] for item in container["environment"])
    helm = _yaml("helm/values.yaml")
    assert "postgresqlPassword" not in helm["postgresql"] and helm["generatePostgresqlPasswordSecret"] is False


def test_the_compose_file_wires_the_service_together():
    compose = _yaml("docker-compose.yml")
    services = compose["services"]
    assert set(services) == {"postgres", "objectstore", "buckets", "code", "webserver", "daemon"}
    assert services["code"]["command"][:3] == ["dagster", "api", "grpc"]
    assert "mdp_assets.locations.service" in services["code"]["command"]
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    workspace = _yaml("workspace.yaml")["load_from"][0]["grpc_server"]
    assert (workspace["host"], workspace["port"]) == ("code", 4000)
    for name, service in services.items():
        image = service.get("image", "")
        if not image.startswith("${"):
            assert re.search(r":\S*\d", image) and not image.endswith(":latest"), (name, image)
    for port in services["webserver"]["ports"] + services["objectstore"]["ports"]:
        assert port.startswith("127.0.0.1:"), port  # nothing listens beyond the machine unless a lab says so


def test_the_dockerfile_is_pinned_multi_stage_and_copies_what_exists():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    arguments = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, flags=re.MULTILINE))
    stages = re.findall(r"^FROM (\S+)", dockerfile, flags=re.MULTILINE)
    assert len(stages) >= 2
    for image in stages:
        resolved = arguments.get(image.strip("${}"), image)
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-bookworm", resolved), resolved
    for source in re.findall(r"^COPY (?!--from)(\S+)", dockerfile, flags=re.MULTILINE):
        assert (REPOSITORY / source).exists(), source
    assert "pip check" in dockerfile and re.search(r"^USER mdp$", dockerfile, flags=re.MULTILINE)


def test_the_deploy_instance_uses_the_run_queue_with_per_plate_and_cellprofiler_limits():
    instance = _yaml("dagster.yaml")
    assert instance["run_coordinator"]["class"] == "QueuedRunCoordinator"
    limits = instance["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    assert instance["concurrency"]["pools"]["default_limit"] >= 1
    helm = _yaml("helm/values.yaml")
    assert helm["runLauncher"]["type"] == "K8sRunLauncher"
    assert helm["concurrency"]["runs"]["tagConcurrencyLimits"][0]["key"] == "dagster/partition"
    assert helm["dagster-user-deployments"]["deployments"][0]["dagsterApiGrpcArgs"] == ["-m", "mdp_assets.locations.kubernetes"]


def test_the_ecs_instance_config_matches_the_run_launchers_schema():
    from dagster_aws.ecs import EcsRunLauncher

    launcher = _yaml("ecs/dagster.yaml")["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_aws.ecs", "EcsRunLauncher")
    assert set(launcher["config"]) <= set(EcsRunLauncher.config_type())


@pytest.fixture
def service_environment(monkeypatch, tmp_path):
    """The variables deploy/mdp.yaml reads, as a site would set them."""
    for name, value in {"MDP_CONFIG": str(DEPLOY / "mdp.yaml"), "MDP_DATA_ROOT": str(tmp_path / "data"),
                        "DAGSTER_HOME": str(tmp_path / "home"), "MDP_LANDING_BUCKET": "mdp-landing",
                        "MDP_S3_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


def test_the_cellprofiler_steps_share_a_concurrency_pool(service_environment):
    from mdp_assets.config import load_deployment
    from mdp_assets.definitions import build_definitions
    from mdp_assets.engines.cellprofiler.engine import CELLPROFILER_POOL

    defs = build_definitions(load_deployment())
    pools = {name: defs.resolve_assets_def(name).op.pool for name in ("illumination_functions", "segmentation_masks", "well_profiles")}
    assert pools == {"illumination_functions": CELLPROFILER_POOL, "segmentation_masks": CELLPROFILER_POOL, "well_profiles": None}


@pytest.mark.parametrize("location", ["service", "kubernetes", "ecs"])
def test_the_code_locations_load(location, service_environment):
    import importlib

    defs = importlib.import_module(f"mdp_assets.locations.{location}").defs()
    job = defs.resolve_job_def("plate_job")
    # The executor is deploy/mdp.yaml's (execution.executor), except where the location brings its own.
    assert job.executor_def.name == ("k8s" if location == "kubernetes" else "multiprocess")
    assert defs.resolve_sensor_def("new_plate_sensor") is not None


def _in_a_step(render):
    """What `render(context)` returns inside a real step (plate "Plate 1", step segmentation_masks)."""
    seen = {}

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["Plate 1"]), name="segmentation_masks")
    def step(context: dg.AssetExecutionContext):
        seen["value"] = render(context)
        return dg.MaterializeResult()

    assert dg.materialize([step], partition_key="Plate 1").success
    return seen["value"]


def test_each_cellprofiler_group_is_a_pod_that_mounts_the_data_claim_and_runs_the_runner():
    from dagster_k8s.pipes import build_pod_body

    from mdp_assets.engines.cellprofiler.containers import KubernetesCellProfilerEngine
    from mdp_assets.engines.cellprofiler.engine import RUNNER

    engine = KubernetesCellProfilerEngine(environment="/opt/mdp/.mdp/cellprofiler", image="registry.example.org/mdp:0.1.0",
                                          data_volume_claim="mdp-data", data_root="/data", cpus_per_group=2,
                                          memory="6Gi", wells_per_group=4)
    labels = _in_a_step(lambda context: group_labels(context, "A01-B12"))
    assert labels == {"mdp/plate": "Plate_1", "mdp/step": "segmentation_masks", "mdp/group": "A01-B12"}
    pod = build_pod_body("cellprofiler-1", engine.image, engine.command, {"DAGSTER_PIPES_CONTEXT": "x"},
                         {"labels": labels}, engine.pod_spec()).to_dict()
    container = pod["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/mdp:0.1.0"
    assert container["command"] == ["/opt/mdp/.mdp/cellprofiler/bin/python", str(RUNNER)]
    assert container["volume_mounts"][0]["mount_path"] == "/data"
    assert container["resources"]["limits"] == {"cpu": "2", "memory": "6Gi"}
    assert labels.items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["volumes"][0]["persistent_volume_claim"]["claim_name"] == "mdp-data"
    assert pod["spec"]["restart_policy"] == "Never"
    assert {"name": "DAGSTER_PIPES_CONTEXT", "value": "x", "value_from": None} in container["env"]
    # A 384-well plate becomes 96 groups, so 96 pods.
    assert engine.for_wells(384).workers == 96 and engine.for_wells(3).workers == 1


def test_each_cellprofiler_group_is_an_ecs_task_that_overrides_the_command():
    from mdp_assets.engines.cellprofiler.containers import EcsCellProfilerEngine

    engine = EcsCellProfilerEngine(environment="/opt/mdp/.mdp/cellprofiler", cluster="mdp",
                                   task_definition="mdp-cellprofiler", subnets=["subnet-1"], security_groups=["sg-1"])
    params = _in_a_step(lambda context: engine.run_task_params(context, {"id": "A01-B12"}))
    assert params["overrides"]["containerOverrides"] == [{"name": "cellprofiler", "command": engine.command}]
    assert params["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == ["subnet-1"]
    assert {"key": "mdp/group", "value": "A01-B12"} in params["tags"]
    registered = json.loads((DEPLOY / "ecs" / "mdp-cellprofiler.json").read_text())
    assert registered["family"] == params["taskDefinition"]
    assert registered["containerDefinitions"][0]["name"] == engine.container_name


def test_the_deployments_container_settings_reach_the_kubernetes_engine(tmp_path, monkeypatch):
    from mdp_assets.locations import kubernetes

    config = tmp_path / "mdp.yaml"
    config.write_text(yaml.safe_dump({"data_root": str(tmp_path / "data"), "engine": {"kind": "cellprofiler",
                      "cellprofiler": {"containers": {"wells_per_group": 8, "max_parallel_groups": 48}}}}))
    monkeypatch.setenv("MDP_CONFIG", str(config))
    for name, value in {"MDP_IMAGE": "mdp:0.1.0", "MDP_K8S_NAMESPACE": "mdp", "MDP_DATA_VOLUME_CLAIM": "mdp-data"}.items():
        monkeypatch.setenv(name, value)
    engine = kubernetes.defs().resources["cellprofiler"]
    assert (engine.wells_per_group, engine.max_parallel_groups) == (8, 48)


def test_stack_processes_do_not_inherit_an_ignored_sigint():
    """Under `&`, nohup or make, SIGINT arrives ignored; Dagster's servers map SIGTERM to SIGINT's handler, so
    a child started as it is would never stop on SIGTERM (CI saw exactly that)."""
    import signal
    import subprocess
    import sys

    from tools.local_stack import _signals_not_ignored

    def ignored(pid: int) -> int:
        line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("SigIgn:"))
        return int(line.split()[1], 16)

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        plain = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        with _signals_not_ignored():
            reset = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # this process is left as it was
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        assert ignored(plain.pid) & (1 << (signal.SIGINT - 1))
        assert not ignored(reset.pid) & (1 << (signal.SIGINT - 1))
        reset.terminate()
        assert reset.wait(timeout=10) == -signal.SIGTERM
    finally:
        for child in (plain, reset):
            child.kill()
            child.wait()
