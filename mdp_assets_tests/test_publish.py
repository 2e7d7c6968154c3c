"""Publication that obeys origin: a public demo plate, made through the real chain (built-in engine), published to a
Zenodo and an IDR deposit (files, checksums, RO-Crate, the targets' metadata, their limits); refused for a
collaborator plate and for a consensus that pools one, naming the plate and the rule; recorded in the catalog and
the cost summary; uploaded to a local STAND-IN for Zenodo's REST deposition API (not zenodo.org)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import duckdb
import pandas as pd
import pytest
import yaml
from rocrate.rocrate import ROCrate

from mdp_assets.checksums import sha256_file
from mdp_assets.cli import main
from mdp_assets.errors import MdpError
from mdp_assets.plates.demo import DemoPlateSpec, write_demo_plate
from mdp_assets.science.ome_zarr import PLATE_STORE
from mdp_assets.services.publish import publish, upload_deposit, verify_deposits
from mdp_assets.storage.policy import load_policy
from mdp_assets.storage.publication import TARGETS, DepositFile, check_limits
from mdp_assets.storage.resource import MdpStorage
from mdp_assets_tests.conftest import defs_for, make_deployment, run_plate, stored

pytestmark = pytest.mark.slow

SPEC = dict(rows="BC", columns=(2, 3, 4, 5), sites_per_well=1, image_size=192, cells_per_site=16)
PUBLIC, COLLABORATOR = "PUB-0001", "COLLAB-0001"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A public and a collaborator demo plate through every level, and the consensus over both."""
    folder = tmp_path_factory.mktemp("publish")
    storage = MdpStorage.from_deployment(make_deployment(folder))
    with dg.instance_for_test() as instance:
        for barcode, origin, seed in ((PUBLIC, "public", 1), (COLLABORATOR, "collaborator-academic", 2)):
            write_demo_plate(storage.landing_path, DemoPlateSpec(barcode=barcode, seed=seed, origin=origin, **SPEC))
            result, _, _ = run_plate(storage, instance, barcode)
            assert result.success
        assert defs_for(storage).resolve_job_def("consensus_job").execute_in_process(instance=instance).success
        yield storage, instance, folder / "mdp.yaml"


def _sha256sums(folder: Path) -> dict[str, str]:
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (line.split("  ", 1) for line in lines)}


def _deposit_rows(storage):
    with duckdb.connect(str(storage.catalog_path), read_only=True) as con:
        return con.execute("SELECT deposit_id, target, plates, levels, files, bytes FROM deposits ORDER BY created").fetchall()


def test_a_public_plate_publishes_to_a_zenodo_deposit(made, capsys):
    storage, instance, config = made
    published = publish(storage, [PUBLIC], "zenodo", levels=["well_profiles", "well_embeddings"],
                        creators=["Doe, Jane"], description="Demo screen.", who="tester", instance=instance)
    folder = published.folder
    assert folder.parent == storage.root / "public-archive" / "deposits" and folder.is_dir()
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["well_profiles__PUB-0001.parquet", "well_embeddings__PUB-0001.parquet", "README.md",
                            "LICENSE.txt", "SHA256SUMS", "zenodo-metadata.json", "deposit.json",
                            "ro-crate-metadata.json"])  # no images on Zenodo by default
    # The data are the stored partitions' bytes, and every file's sha256 is what SHA256SUMS says.
    stored_profiles = stored(storage, "well_profiles", PUBLIC) / "table.parquet"
    assert sha256_file(folder / "well_profiles__PUB-0001.parquet") == sha256_file(stored_profiles)
    sums = _sha256sums(folder)
    assert set(sums) == set(names) - {"SHA256SUMS", "deposit.json", "ro-crate-metadata.json"}
    assert all(sha256_file(folder / name) == digest for name, digest in sums.items())
    # Zenodo's deposition metadata.
    metadata = json.loads((folder / "zenodo-metadata.json").read_text())["metadata"]
    assert metadata["upload_type"] == "dataset" and metadata["access_right"] == "open"
    assert metadata["license"] == "cc-by-4.0" and metadata["creators"] == [{"name": "Doe, Jane"}]
    assert metadata["title"] == "Cell Painting profiles of plates PUB-0001" and "Demo screen." in metadata["description"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", metadata["publication_date"])
    assert "Creative Commons Attribution 4.0" in (folder / "LICENSE.txt").read_text()
    # The RO-Crate (1.1), read back with the rocrate library: licence, author, every file with its sha256, and the
    # stored partitions it came from.
    crate = ROCrate(folder)
    root = crate.root_dataset
    assert root["license"].id == "https://creativecommons.org/licenses/by/4.0/" and root["name"] == metadata["title"]
    assert [a["name"] for a in root["author"]] == ["Doe, Jane"]
    parts = {e.id: e for e in crate.data_entities}
    assert set(parts) == set(names) - {"ro-crate-metadata.json"}
    assert all(parts[name]["sha256"] == sha256_file(folder / name) for name in parts)
    action = next(e for e in crate.contextual_entities if "CreateAction" in e.type)
    used = {(u["name"], u["identifier"]) for u in action["object"]}
    data_version = storage.store().locate("well_profiles", PUBLIC).record["data_version"]
    assert ("well_profiles of PUB-0001", data_version) in used
    # Recorded: the catalog (what, when, target, files and their sha256), `mdp catalog`, the level's page.
    (deposit_id, target, plates, levels, files, size), *_ = _deposit_rows(storage)
    assert (deposit_id, target, plates, levels) == (published.deposit_id, "zenodo", PUBLIC, "well_embeddings, well_profiles")
    with duckdb.connect(str(storage.catalog_path), read_only=True) as con:
        rows = dict(con.execute("SELECT relpath, sha256 FROM deposit_files WHERE deposit_id = ?", [deposit_id]).fetchall())
        made_from = con.execute("SELECT made_from FROM deposit_files WHERE relpath = 'well_profiles__PUB-0001.parquet'"
                                ).fetchone()[0]
    assert rows == {name: sha256_file(folder / name) for name in names} and files == len(names)
    assert size == sum((folder / n).stat().st_size for n in names) and made_from == "well_profiles of PUB-0001"
    assert main(["--config", str(config), "catalog"]) == 0
    assert f"{deposit_id}  zenodo" in capsys.readouterr().out
    seen = instance.fetch_observations(dg.AssetKey("well_profiles"), limit=5).records
    meta = seen[0].asset_observation.metadata
    assert meta["published_to"].value == "zenodo" and meta["deposit"].value == deposit_id


def test_an_idr_deposit_takes_the_images_and_the_submission_files(made):
    storage, _, _ = made
    published = publish(storage, [PUBLIC], "idr", levels=["well_profiles", "well_embeddings"], creators=["Doe, Jane"])
    folder = published.folder
    # The plate's OME-Zarr store stands for its 40 TIFFs (IDR takes Zarr), byte for byte as stored.
    plate_store = stored(storage, "ome_zarr_plate", PUBLIC) / PLATE_STORE
    deposited = folder / "images" / f"{PUBLIC}.ome.zarr"
    expected = {p.relative_to(plate_store).as_posix(): sha256_file(p) for p in plate_store.rglob("*") if p.is_file()}
    assert {p.relative_to(deposited).as_posix(): sha256_file(p) for p in deposited.rglob("*") if p.is_file()} == expected
    assert not (folder / "images" / PUBLIC).exists()
    study = {line.split("\t")[0]: line.rstrip("\n").split("\t")[1:]
             for line in (folder / "idr0000-study.txt").read_text().splitlines() if "\t" in line}
    assert study["Study Type"] == ["high content screen"] and study["Study License"] == ["CC BY 4.0"]
    assert study["Library File Name"] == ["idr0000-screenA-library.txt"]
    assert study["Processed Data File Name"] == ["idr0000-screenA-processed-well_embeddings.txt",
                                                 "idr0000-screenA-processed-well_profiles.txt"]
    assert study["Screen Size"][:3] == ["Plates: 1", "5D Images: 8", "Planes: 40"]  # 8 sites, 5 channels each
    library = pd.read_csv(folder / "screenA" / "idr0000-screenA-library.txt", sep="\t")
    assert list(library.columns[:2]) == ["Plate", "Well"] and len(library) == 8
    assert set(library.loc[library["Reagent Identifier"] == "DMSO", "Control Type"]) == {"negative control"}
    assert library["Channels"].iloc[0] == "AGP;DNA;ER;Mito;RNA"
    processed = pd.read_csv(folder / "screenA" / "idr0000-screenA-processed-well_profiles.txt", sep="\t")
    profiles = pd.read_parquet(stored(storage, "well_profiles", PUBLIC) / "table.parquet")
    assert processed.shape == profiles.shape and list(processed["Metadata_Well"]) == list(profiles["Metadata_Well"])
    crate = json.loads((folder / "ro-crate-metadata.json").read_text())
    files = {e["@id"]: e for e in crate["@graph"] if e.get("@type") == "File"}
    first = next(iter(sorted(expected)))
    assert files[f"images/{PUBLIC}.ome.zarr/{first}"]["sha256"] == expected[first]
    assert all(sha256_file(folder / relpath) == digest for relpath, digest in _sha256sums(folder).items())


def test_the_targets_limits_refuse_naming_the_limit_and_the_file(made):
    storage, _, _ = made
    files = [DepositFile(f"f{i}.parquet", Path("/nonexistent"), 10, "0" * 64, "well_profiles of P") for i in range(3)]
    check_limits(TARGETS["zenodo"], files)
    with pytest.raises(MdpError, match=r"Zenodo takes at most 100 files per record .*help\.zenodo\.org.*has 101"):
        check_limits(TARGETS["zenodo"], [dataclasses.replace(files[0], relpath=f"f{i}") for i in range(101)])
    big = dataclasses.replace(files[0], relpath="well_profiles__P.parquet", bytes=int(21e9))
    with pytest.raises(MdpError, match=r"Figshare takes files of at most 20000000000 bytes .*; "
                                       r"well_profiles__P\.parquet \(from well_profiles of P\) has 21000000000"):
        check_limits(TARGETS["figshare"], [big])
    with pytest.raises(MdpError, match=r"Zenodo takes at most 50000000000 bytes per record"):
        check_limits(TARGETS["zenodo"], [dataclasses.replace(big, bytes=int(30e9))] * 2)
    with pytest.raises(MdpError, match=r"Bio-Formats reads .*images/P/a\.png"):
        check_limits(TARGETS["idr"], [dataclasses.replace(files[0], relpath="images/P/a.png", kind="image")])
    # The plate's 40 images and the metadata stay under Zenodo's 100 files; a 30-file limit refuses the same deposit
    # (naming the limit) before anything is written.
    before = _deposit_rows(storage)
    strict = dataclasses.replace(TARGETS["zenodo"], max_files=30)
    TARGETS["zenodo"] = strict
    try:
        with pytest.raises(MdpError, match="Zenodo takes at most 30 files per record"):
            publish(storage, [PUBLIC], "zenodo", levels=["well_profiles"], include_images=True)
    finally:
        TARGETS["zenodo"] = dataclasses.replace(strict, max_files=100)
    assert _deposit_rows(storage) == before


def test_publication_is_refused_for_a_collaborator_plate_and_a_consensus_that_pools_one(made):
    storage, _, config = made
    before = _deposit_rows(storage)
    deposits = sorted((storage.root / "public-archive" / "deposits").glob("*"))
    with pytest.raises(MdpError) as error:
        publish(storage, [COLLABORATOR], "zenodo", levels=["well_profiles"])
    assert ("plate COLLAB-0001 may not be published: rule 'collaborator data stay private unless released': its "
            "origin is 'collaborator-academic' and it is not released") in str(error.value)
    # The public plate's default levels include the consensus, which pools the collaborator plate: refused too.
    with pytest.raises(MdpError) as error:
        publish(storage, [PUBLIC], "zenodo")
    message = str(error.value)
    assert ("consensus_profiles of all plates, which pools plate COLLAB-0001, may not be published: rule "
            "'collaborator data stay private unless released'") in message
    assert "PUB-0001" not in message.split("publication refused: ")[1]  # the public plate itself is fine
    assert main(["--config", str(config), "publish", PUBLIC, "--to", "idr", "--levels", "consensus_profiles"]) == 2
    assert _deposit_rows(storage) == before
    assert sorted((storage.root / "public-archive" / "deposits").glob("*")) == deposits
    # The policy's other rules: identifiable patient data never, internal plates only once reclassified public.
    policy = storage.policy()
    assert "identifiable patient data are never shared" in policy.publication_problem("public", True, False)
    assert "mdp reclassify PLATE --origin public" in policy.publication_problem("internal", False, False)
    assert policy.publication_problem("collaborator-industry", False, True) is None
    assert policy.publication_problem("public", False, False) is None
    # And a policy may not list collaborator origins as publishable: refused when it loads, naming the rule.
    bad = storage.root.parent / "bad-policy.yaml"
    bad.write_text(yaml.safe_dump({**policy.model_dump(mode="json"),
                                   "publication": {"origins": ["public", "collaborator-industry"]}}))
    with pytest.raises(MdpError, match="rule 'collaborator data stay private unless released': publication.origins "
                                       "must not include 'collaborator-industry'"):
        load_policy(bad)


def test_published_deposits_count_in_the_costs(made):
    storage, instance, _ = made
    if not any(row[1] == "zenodo" for row in _deposit_rows(storage)):
        publish(storage, [PUBLIC], "zenodo", levels=["well_profiles"])
    result = defs_for(storage).resolve_job_def("storage_costs_job").execute_in_process(instance=instance)
    assert result.success
    meta = result.asset_materializations_for_node("storage_costs")[0].metadata
    with duckdb.connect(str(storage.catalog_path), read_only=True) as con:
        by_target = dict(con.execute("SELECT target, sum(bytes) FROM deposits GROUP BY target").fetchall())
    assert meta["published_bytes_by_target"].value == {t: int(b) for t, b in by_target.items()}
    projection = pd.read_parquet(stored(storage, "storage_costs", None) / "projection.parquet")
    month_12 = projection[(projection["month"] == 12) & (projection["tier"] == "public-archive")]
    assert int(month_12["bytes"].sum()) == sum(by_target.values())  # deposits stay, for good


class ZenodoStandIn(BaseHTTPRequestHandler):
    """A STAND-IN for Zenodo's REST deposition API, answering as https://developers.zenodo.org documents it (create a
    deposition, PUT files to its bucket, PUT metadata, publish). It is not Zenodo: nothing here has been run against
    zenodo.org or sandbox.zenodo.org."""

    token = "stand-in-token"
    depositions: dict[int, dict] = {}
    buckets: dict[str, dict[str, bytes]] = {}

    def log_message(self, *args) -> None:  # keep the test output quiet
        pass

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self._answer(401, {"status": 401, "message": "The server could not verify that you are authorized"})
            return False
        return True

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def do_POST(self) -> None:
        if not self._authorized():
            return
        base = f"http://{self.headers['Host']}"
        if self.path == "/api/deposit/depositions":
            assert json.loads(self._body()) == {}
            number, bucket = len(self.depositions) + 1, uuid.uuid4().hex
            self.depositions[number] = {"id": number, "metadata": {}, "state": "unsubmitted", "bucket": bucket}
            self.buckets[bucket] = {}
            self._answer(201, {"id": number, "links": {"bucket": f"{base}/api/files/{bucket}",
                                                       "html": f"{base}/deposit/{number}"}})
        elif match := re.fullmatch(r"/api/deposit/depositions/(\d+)/actions/publish", self.path):
            deposition = self.depositions[int(match.group(1))]
            deposition["state"] = "done"
            self._answer(202, {"id": deposition["id"], "doi": f"10.5072/zenodo.{deposition['id']}",
                               "links": {"record_html": f"{base}/record/{deposition['id']}"}})
        else:
            self._answer(404, {"message": "not found"})

    def do_PUT(self) -> None:
        if not self._authorized():
            return
        if match := re.fullmatch(r"/api/files/([0-9a-f]+)/(.+)", self.path):
            data = self._body()
            self.buckets[match.group(1)][match.group(2)] = data
            self._answer(201, {"key": match.group(2), "size": len(data),
                               "checksum": f"md5:{hashlib.md5(data).hexdigest()}"})
        elif match := re.fullmatch(r"/api/deposit/depositions/(\d+)", self.path):
            self.depositions[int(match.group(1))]["metadata"] = json.loads(self._body())["metadata"]
            self._answer(200, self.depositions[int(match.group(1))])
        else:
            self._answer(404, {"message": "not found"})


@pytest.fixture
def zenodo_stand_in():
    server = ThreadingHTTPServer(("127.0.0.1", 0), ZenodoStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_zenodo_uploader_against_a_local_stand_in_of_the_rest_api(made, zenodo_stand_in, monkeypatch):
    storage, _, _ = made
    published = publish(storage, [PUBLIC], "zenodo", levels=["well_profiles"], creators=["Doe, Jane"])
    monkeypatch.setenv("ZENODO_ACCESS_TOKEN", "wrong")
    with pytest.raises(MdpError, match="create the deposition: POST .* answered 401"):
        upload_deposit(storage, published.deposit_id, zenodo_stand_in)
    monkeypatch.setenv("ZENODO_ACCESS_TOKEN", ZenodoStandIn.token)
    uploaded = upload_deposit(storage, published.deposit_id, zenodo_stand_in, publish_record=True)
    deposition = ZenodoStandIn.depositions[uploaded["deposition_id"]]
    assert uploaded["state"] == "published" and deposition["state"] == "done"
    assert uploaded["doi"] == f"10.5072/zenodo.{deposition['id']}"
    received = ZenodoStandIn.buckets[deposition["bucket"]]
    folder = published.folder
    assert {name: hashlib.sha256(data).hexdigest() for name, data in received.items()} == \
        {p.name: sha256_file(p) for p in folder.iterdir()}
    assert deposition["metadata"] == json.loads((folder / "zenodo-metadata.json").read_text())["metadata"]
    with duckdb.connect(str(storage.catalog_path), read_only=True) as con:
        recorded = con.execute("SELECT uploaded FROM deposits WHERE deposit_id = ?", [published.deposit_id]).fetchone()[0]
    assert json.loads(recorded)["deposition_id"] == deposition["id"]
    # A deposit whose file changed since it was built is not uploaded, and verification names the file.
    assert verify_deposits(storage)[1] == []
    (folder / "README.md").write_text("changed")
    with pytest.raises(MdpError, match=r"\['README.md'\] no longer match their sha256; nothing was uploaded"):
        upload_deposit(storage, published.deposit_id, zenodo_stand_in)
    assert verify_deposits(storage)[1] == [f"corrupt: {folder / 'README.md'} (deposit {published.deposit_id})"]
