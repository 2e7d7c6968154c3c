"""`mdp catalog --sql` reads the catalog and nothing else: no writes, no other file, no settings changed."""

import pytest

from mdp_assets.errors import MdpError
from mdp_assets.storage import catalog


@pytest.fixture
def catalog_path(tmp_path):
    path = tmp_path / "catalog.duckdb"
    with catalog.connect(path):
        pass  # the schema, empty
    return path


def test_a_select_over_the_catalog_works(catalog_path):
    columns, rows = catalog.query(catalog_path, "select count(*) as files from stored_files")
    assert columns == ["files"] and rows == [(0,)]


@pytest.mark.parametrize("sql, why", [
    ("select * from read_csv('/etc/passwd')", "file system operations are disabled"),
    ("copy stored_files to '{tmp}/leak.csv'", "file system operations are disabled"),
    ("delete from stored_files", "read-only mode"),
    ("set enable_external_access = true", "configuration has been locked"),
    ("attach '{tmp}/other.duckdb' as other", "file system operations are disabled"),
])
def test_hostile_sql_is_refused_with_a_clear_error(catalog_path, tmp_path, sql, why):
    with pytest.raises(MdpError, match="catalog query refused or failed") as refused:
        catalog.query(catalog_path, sql.format(tmp=tmp_path))
    assert why.lower() in str(refused.value).lower(), str(refused.value)
    assert not (tmp_path / "leak.csv").exists() and not (tmp_path / "other.duckdb").exists()
