"""Files and folders gfss-bench creates get the usual modes under the user's umask (not tempfile's private 0600 and
0700), and the results-folder probe fails early without leaving anything behind."""

import os
import stat

import pytest

from gfss_bench.errors import GFSSError
from gfss_bench.paths import atomic_write_bytes, check_writable_folder, current_umask
from gfss_bench.results.store import ResultStore
from tests.results.helpers import make_result


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_writes_get_the_usual_modes(tmp_path, umask):
    assert current_umask() == umask
    path = tmp_path / "new" / "folder" / "file.bin"
    atomic_write_bytes(path, b"data")
    assert mode(path) == 0o666 & ~umask  # 0644 under umask 022
    assert mode(path.parent) == mode(path.parent.parent) == 0o777 & ~umask  # 0755 under 022
    result = make_result("diam", 0, 60, 30, runs=1)
    saved = ResultStore(tmp_path / "results").save(result)
    assert mode(saved) == 0o666 & ~umask and mode(saved.parent) == 0o777 & ~umask


def test_checkpoints_and_synthetic_data_get_the_usual_modes(tmp_path, umask):
    from gfss_bench.data.synthetic import write_dataset
    from gfss_bench.models.pspnet_training import _atomic_save

    _atomic_save({"x": 1}, tmp_path / "ckpt" / "fold0.pth")
    assert mode(tmp_path / "ckpt" / "fold0.pth") == 0o666 & ~umask
    root = write_dataset(tmp_path / "synthetic" / "v1", sizes={"train": 1, "val": 1})
    assert mode(root) == mode(root / "JPEGImages") == 0o777 & ~umask  # the generated folder, not mkdtemp's 0700
    assert {mode(p) for p in root.rglob("*") if p.is_file()} == {0o666 & ~umask}


def test_writable_probe_leaves_nothing_and_fails_early(tmp_path):
    check_writable_folder(tmp_path / "not" / "yet", "results folder", "fix it")
    assert list(tmp_path.iterdir()) == []  # probed where it would be created; nothing created
    (tmp_path / "file").write_text("x")
    with pytest.raises(GFSSError, match=r"results folder .*file/results cannot be written .*; fix it"):
        check_writable_folder(tmp_path / "file" / "results", "results folder", "fix it")
