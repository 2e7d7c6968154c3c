"""One configuration per deployment: mdp.yaml validated with errors naming the file and field, paths resolved
against the file (never the working directory), values and their sources shown, per-plate overrides limited
to the documented subset, and the instance config rendered from it."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from mdp_assets.cli import main
from mdp_assets.config import PLATE_OVERRIDABLE, StepSettings, load_deployment
from mdp_assets.errors import MdpError
from mdp_assets.services.instance import instance_config
from mdp_assets_tests.conftest import REPOSITORY

CODE_VERSIONS = """
import json, os, sys
from mdp_assets.config import load_deployment
from mdp_assets.definitions import build_definitions
defs = build_definitions(load_deployment())
graph = defs.resolve_asset_graph()
print(json.dumps({k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}))
"""


def _write(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mdp.yaml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_the_same_mdp_yaml_gives_the_same_code_versions_from_any_working_directory(tmp_path):
    pipelines = tmp_path / "deployment" / "pipelines"
    pipelines.mkdir(parents=True)
    (pipelines / "analysis.cppipe").write_text("CellProfiler Pipeline: http://www.cellprofiler.org\nVersion:5\n")
    fake_environment = tmp_path / "deployment" / "cp-env" / "bin"
    fake_environment.mkdir(parents=True)
    (fake_environment / "python").write_text("")  # `auto` picks CellProfiler when its environment exists
    config = _write(tmp_path / "deployment", "data_root: data\nengine:\n  kind: auto\n  cellprofiler:\n"
                    "    environment: cp-env\n    analysis_pipeline: pipelines/analysis.cppipe\n")
    versions = []
    for cwd in (tmp_path, tmp_path / "deployment" / "pipelines", REPOSITORY):
        env = {**os.environ, "MDP_CONFIG": str(config)}
        out = subprocess.run([sys.executable, "-c", CODE_VERSIONS], cwd=cwd, env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        versions.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert versions[0] == versions[1] == versions[2]
    assert versions[0]["segmentation_masks"].startswith("cellprofiler-4.2.8.1-"), "the relative environment was found"


def test_invalid_configuration_names_the_file_and_field(tmp_path):
    cases = {
        "qc:\n  min_power_log_log_slope: steep\n": "field 'qc.min_power_log_log_slope'",
        "qc:\n  focus: 1\n": "field 'qc.focus'",
        "engine:\n  kind: gpu\n": "field 'engine.kind'",
        "storage:\n  landing: {folder: a, s3_bucket: b}\n": "give either folder or s3_bucket",
        "a: &x [1]\nb: *x\n": "anchors and aliases are not allowed",
        "data_root: ${MDP_TEST_SURELY_UNSET}\n": "environment variable MDP_TEST_SURELY_UNSET is not set",
        "storage:\n  policy: nonesuch\n": "no shipped policy 'nonesuch'",
    }
    for index, (text, message) in enumerate(cases.items()):
        path = _write(tmp_path / str(index), text)
        with pytest.raises(MdpError) as error:
            load_deployment(path).policy_path()
        assert str(path) in str(error.value) and message in str(error.value), text


def test_config_show_prints_each_value_and_where_it_came_from(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MDP_TEST_BUCKET", "lab-landing")
    path = _write(tmp_path, "data_root: data\nqc:\n  min_power_log_log_slope: -3.1\n"
                  "storage:\n  landing:\n    s3_bucket: ${MDP_TEST_BUCKET}\n")
    assert main(["--config", str(path), "config", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    values = shown["values"]
    assert shown["file"] == str(path)
    assert values["data_root"] == {"value": str(tmp_path / "data"), "source": "file mdp.yaml:1"}
    assert values["qc.min_power_log_log_slope"] == {"value": -3.1, "source": "file mdp.yaml:3"}
    assert values["storage.landing.s3_bucket"]["value"] == "lab-landing"
    assert values["storage.landing.s3_bucket"]["source"] == "env MDP_TEST_BUCKET (via mdp.yaml:6)"
    assert values["qc.max_percent_maximal"]["source"] == "default"


def test_a_plate_may_override_only_the_documented_subset():
    settings = StepSettings()
    changed = settings.for_plate({"qc": {"min_power_log_log_slope": -3.0}, "crops": {"size": 64}}, "P1")
    assert changed.qc.min_power_log_log_slope == -3.0 and changed.crops.size == 64
    assert changed.code_version("image_qc") != settings.code_version("image_qc")
    assert changed.code_version("well_profiles") == settings.code_version("well_profiles")
    assert "profiles.corr_threshold" not in PLATE_OVERRIDABLE
    with pytest.raises(MdpError, match=r"may not override \['settings.profiles.corr_threshold'\]"):
        settings.for_plate({"profiles": {"corr_threshold": 0.5}}, "P1")


def test_the_shipped_instance_configs_match_their_deployments(monkeypatch):
    """dagster.yaml (embedded) and deploy/dagster.yaml (service) carry the run queue their mdp.yaml implies."""
    embedded = load_deployment(REPOSITORY / "mdp.yaml")
    assert yaml.safe_load((REPOSITORY / "dagster.yaml").read_text()) == instance_config(embedded)
    for name, value in {"MDP_DATA_ROOT": "/srv/mdp", "DAGSTER_HOME": "/srv/home", "MDP_LANDING_BUCKET": "in"}.items():
        monkeypatch.setenv(name, value)
    service = load_deployment(REPOSITORY / "deploy" / "mdp.yaml")
    service_file = yaml.safe_load((REPOSITORY / "deploy" / "dagster.yaml").read_text())
    rendered = instance_config(service, storage=service_file["storage"])
    assert {k: service_file[k] for k in rendered} == rendered
