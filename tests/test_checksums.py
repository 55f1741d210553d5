"""migrator.checksums on its own: the file hash, and drift read from recorded sums."""

from pathlib import Path
from types import SimpleNamespace

from migrator import checksums


def test_the_hash_ignores_line_endings_and_nothing_else(tmp_path):
    unix, windows, old_mac = (tmp_path / n for n in ("unix.sql", "windows.sql", "mac.sql"))
    unix.write_bytes(b"CREATE TABLE t (id int);\nSELECT 1;\n")
    windows.write_bytes(b"CREATE TABLE t (id int);\r\nSELECT 1;\r\n")
    old_mac.write_bytes(b"CREATE TABLE t (id int);\rSELECT 1;\r")
    assert checksums.file_sha256(unix) == checksums.file_sha256(windows) == checksums.file_sha256(old_mac)
    edited = tmp_path / "edited.sql"
    edited.write_bytes(b"CREATE TABLE t (id bigint);\nSELECT 1;\n")
    assert checksums.file_sha256(edited) != checksums.file_sha256(unix)
    trailing_space = tmp_path / "space.sql"
    trailing_space.write_bytes(b"CREATE TABLE t (id int); \nSELECT 1;\n")
    assert checksums.file_sha256(trailing_space) != checksums.file_sha256(unix)


def test_drift_is_an_applied_migration_whose_file_differs_from_its_recorded_sum(tmp_path):
    files = {}
    for name, text in (("0001_a", "SELECT 1;"), ("0002_b", "SELECT 2;"), ("0003_c", "SELECT 3;")):
        path = tmp_path / f"{name}.sql"
        path.write_text(text)
        files[name] = SimpleNamespace(id=name, path=str(path))
    sums = {name: checksums.file_sha256(Path(m.path)) for name, m in files.items()}
    Path(files["0002_b"].path).write_text("SELECT 'edited';")
    Path(files["0003_c"].path).write_text("SELECT 'edited, but never applied';")
    found = checksums.drifted(list(files.values()), applied={"0001_a", "0002_b"}, sums=sums)
    assert [(d.id, d.recorded == sums["0002_b"]) for d in found] == [("0002_b", True)]
    assert found[0].current == checksums.file_sha256(Path(files["0002_b"].path))
    # an applied migration without a recorded sum (applied before checksums existed) is not drift
    assert checksums.drifted(list(files.values()), applied={"0001_a", "0002_b"}, sums={}) == []
