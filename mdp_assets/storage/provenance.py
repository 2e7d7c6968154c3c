"""Provenance: how exactly each stored partition was made.

A provenance record names the step and its code version, the parameters, the software that ran (with
versions), the project's git commit when there is one, the run, the inputs (asset, partition, data
version, uri, sha256), the outputs (uri, sha256, bytes, files) and the plate's origin.
It is kept twice: as the `provenance` metadata entry of the materialization (for the Dagster UI and
the catalog) and as `ro-crate-metadata.json` in the partition folder, a JSON-LD RO-Crate whose
CreateAction uses schema.org and W3C PROV terms, so provenance travels with the data outside Dagster.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

RO_CRATE_CONTEXT = "https://w3id.org/ro/crate/1.1/context"
RO_CRATE_FILE = "ro-crate-metadata.json"
PROV = "http://www.w3.org/ns/prov#"
SOFTWARE = ("mdp", "dagster", "numpy", "pandas", "pyarrow", "scipy", "scikit-image", "tifffile", "zarr", "duckdb")


def software_versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    versions = {}
    for name in SOFTWARE:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            continue
    versions["python"] = platform.python_version()
    versions.update(extra or {})
    return versions


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the mdp checkout that is running, or None outside a git checkout."""
    package = Path(__file__).resolve().parents[2]
    if not (package / ".git").exists():
        return None
    try:
        result = subprocess.run(["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = result.stdout.strip()
    if result.returncode != 0 or not commit:
        return None
    dirty = subprocess.run(["git", "-C", str(package), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return f"{commit}-dirty" if dirty else commit


def provenance_record(
    *,
    asset: str,
    partition: str | None,
    code_version: str | None,
    parameters: dict[str, Any],
    run_id: str,
    inputs: list[dict[str, Any]],
    outputs: dict[str, Any],
    origin: str | None,
    software: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "asset": asset,
        "partition": partition,
        "code_version": code_version,
        "parameters": parameters,
        "software": software or software_versions(),
        "git_commit": git_commit(),
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(),
        "inputs": inputs,
        "outputs": outputs,
        "origin": origin,
    }


def ro_crate(record: dict[str, Any], files: list[dict[str, Any]]) -> dict[str, Any]:
    """The provenance record as an RO-Crate (JSON-LD): the partition folder is the crate's root Dataset,
    made by a CreateAction (prov:Activity) that used the inputs and ran the listed software."""
    action_id = f"#run-{record['run_id']}-{record['asset']}"
    software = [
        {"@id": f"#software-{name}", "@type": "SoftwareApplication", "name": name, "softwareVersion": version}
        for name, version in sorted(record["software"].items())
    ]
    inputs = [
        {
            "@id": item.get("uri") or f"#input-{item['asset']}-{item.get('partition')}",
            "@type": "Dataset",
            "name": f"{item['asset']} of {item.get('partition') or 'all plates'}",
            "identifier": item.get("data_version"),
            "sha256": item.get("sha256"),
        }
        for item in record["inputs"]
    ]
    parts = [
        {"@id": f["relpath"], "@type": "File", "contentSize": str(f["bytes"]), "sha256": f["sha256"]} for f in files
    ]
    root = {
        "@id": "./",
        "@type": "Dataset",
        "name": f"{record['asset']} of {record['partition'] or 'all plates'}",
        "description": f"mdp level {record['asset']}, code version {record['code_version']}",
        "datePublished": record["created"],
        "identifier": record["outputs"].get("sha256"),
        "hasPart": [{"@id": f["relpath"]} for f in files],
        "prov:wasGeneratedBy": {"@id": action_id},
        "prov:wasDerivedFrom": [{"@id": i["@id"]} for i in inputs],
    }
    action = {
        "@id": action_id,
        "@type": ["CreateAction", "prov:Activity"],
        "name": f"materialize {record['asset']}",
        "endTime": record["created"],
        "instrument": [{"@id": s["@id"]} for s in software],
        "object": [{"@id": i["@id"]} for i in inputs],
        "result": {"@id": "./"},
        "prov:used": [{"@id": i["@id"]} for i in inputs],
        "additionalProperty": [
            {"@type": "PropertyValue", "name": "code_version", "value": record["code_version"]},
            {"@type": "PropertyValue", "name": "parameters", "value": _json(record["parameters"])},
            {"@type": "PropertyValue", "name": "run_id", "value": record["run_id"]},
            {"@type": "PropertyValue", "name": "git_commit", "value": record["git_commit"] or "unknown"},
            {"@type": "PropertyValue", "name": "origin", "value": record["origin"] or "unknown"},
        ],
    }
    descriptor = {
        "@id": RO_CRATE_FILE,
        "@type": "CreativeWork",
        "conformsTo": {"@id": "https://w3id.org/ro/crate/1.1"},
        "about": {"@id": "./"},
    }
    return {
        "@context": [RO_CRATE_CONTEXT, {"prov": PROV}],
        "@graph": [descriptor, root, action, *software, *inputs, *parts],
    }


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def describe(record: dict[str, Any]) -> str:
    """Provenance in words, for a data manager."""
    lines = [
        f"{record['asset']} of {record['partition'] or 'all plates'} was made on {record['created']} by run "
        f"{record['run_id']} (code version {record['code_version']}, mdp commit {record.get('git_commit') or 'unknown'}).",
        f"Origin of the plate: {record.get('origin') or 'unknown'}.",
        "Parameters: " + (_json(record["parameters"]) if record["parameters"] else "none"),
        "Software: " + ", ".join(f"{k} {v}" for k, v in sorted(record["software"].items())),
        f"Stored at {record['outputs'].get('uri')} ({record['outputs'].get('bytes')} bytes, "
        f"{record['outputs'].get('files')} files, sha256 {record['outputs'].get('sha256')}).",
    ]
    for item in record["inputs"]:
        lines.append(
            f"  from {item['asset']} of {item.get('partition') or 'all plates'}: data version {item.get('data_version')}, "
            f"sha256 {item.get('sha256')}, at {item.get('uri')}"
        )
    return "\n".join(lines)


def deposit_crate(record: dict[str, Any], files: list[dict[str, Any]], *, title: str, description: str,
                  creators: list[str], licence_url: str, licence_name: str, date_published: str) -> dict[str, Any]:
    """A publication deposit as an RO-Crate 1.1: the root Dataset (name, description, datePublished, licence,
    authors, every file with its sha256), made by a CreateAction that used the stored partitions it names."""
    crate = ro_crate(record, files)
    graph = crate["@graph"]
    # The stored partitions it came from are named by level, plate and data version, not by the lab's paths.
    renamed = {e["@id"]: f"#source-{e['name'].replace(' ', '-')}" for e in graph
               if e.get("@type") == "Dataset" and e["@id"] != "./"}
    for entity in graph:
        entity["@id"] = renamed.get(entity["@id"], entity["@id"])
        for key in ("object", "prov:used", "prov:wasDerivedFrom"):
            if isinstance(entity.get(key), list):
                entity[key] = [{"@id": renamed.get(ref["@id"], ref["@id"])} for ref in entity[key]]
    root = next(e for e in graph if e["@id"] == "./")
    people = [{"@id": f"#creator-{index}", "@type": "Person", "name": name} for index, name in enumerate(creators, 1)]
    root.update({"name": title, "description": description or title, "datePublished": date_published,
                 "license": {"@id": licence_url}, "author": [{"@id": p["@id"]} for p in people]})
    action = next(e for e in graph if e["@id"] == root["prov:wasGeneratedBy"]["@id"])
    action["name"] = f"publish {record['partition']}"
    # Each property its own entity with an @id (RO-Crate's flattened form; rocrate's reader requires it).
    properties = [{"@id": f"#property-{p['name']}", **p} for p in action.pop("additionalProperty")]
    action["additionalProperty"] = [{"@id": p["@id"]} for p in properties]
    graph += properties
    for entity in graph:
        if entity.get("@type") == "File":
            entity["encodingFormat"] = _format(entity["@id"])
    graph += [{"@id": licence_url, "@type": "CreativeWork", "name": licence_name}, *people]
    return crate


def _format(relpath: str) -> str:
    suffix = relpath.rsplit(".", 1)[-1].lower() if "." in relpath else ""
    return {"parquet": "application/vnd.apache.parquet", "json": "application/json", "md": "text/markdown",
            "txt": "text/plain", "tif": "image/tiff", "tiff": "image/tiff", "npy": "application/octet-stream",
            "csv": "text/csv"}.get(suffix, "application/octet-stream")
