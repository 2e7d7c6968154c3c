import pytest

from mdp_assets.errors import MdpError
from mdp_assets.plates.manifest import load_manifest
from mdp_assets_tests.conftest import write_manifest

VALID = dict(barcode="BR001", origin="internal", platemap="platemap.csv", naming_scheme="phenix", expected_image_count=10)


def test_valid_manifest_loads(tmp_path):
    manifest = load_manifest(write_manifest(tmp_path, **VALID))
    assert manifest.barcode == "BR001" and manifest.nuclei_channel == "DNA" and not manifest.identifiable_patient_data


@pytest.mark.parametrize(
    "change, message",
    [
        ({"origin": "somewhere"}, "field 'origin'"),
        ({"barcode": "../etc"}, "unsafe plate barcode"),
        ({"barcode": "plate 1"}, "unsafe plate barcode"),
        ({"expected_image_count": 0}, "field 'expected_image_count'"),
        ({"platemap": "/etc/passwd"}, "must be a path inside the plate folder"),
        ({"naming_scheme": "regex"}, "needs naming_pattern"),
        ({"naming_scheme": "regex", "naming_pattern": "(?P<well>x)"}, "lacks the named groups"),
        ({"origin": "public", "identifiable_patient_data": True}, "identifiable patient data"),
        ({"barcod": "typo"}, "field 'barcod'"),
    ],
)
def test_bad_manifest_names_file_and_problem(tmp_path, change, message):
    path = write_manifest(tmp_path, **{**VALID, **change})
    with pytest.raises(MdpError) as error:
        load_manifest(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_missing_field_and_broken_yaml(tmp_path):
    fields = dict(VALID)
    del fields["origin"]
    with pytest.raises(MdpError, match="field 'origin': Field required"):
        load_manifest(write_manifest(tmp_path, **fields))
    broken = tmp_path / "plate.yaml"
    broken.write_text("barcode: [unclosed\n")
    with pytest.raises(MdpError, match="not valid YAML"):
        load_manifest(broken)
    with pytest.raises(MdpError, match="not found"):
        load_manifest(tmp_path / "absent.yaml")
