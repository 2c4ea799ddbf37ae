import os

import pytest

from deadzone.fileio import atomic_path, read_json, write_json


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "results.json"
    write_json(target, {"runs": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert read_json(target) == {"runs": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_written_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "r.json", [])
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_non_finite_numbers_are_refused_not_written(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "r.json", {"loss": float("nan")})
    assert not (tmp_path / "r.json").exists()
