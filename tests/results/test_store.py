import json
import os

import pytest

from gfss_bench.results import store as store_module
from gfss_bench.results.store import SCHEMA_VERSION, ResultStore, content_checksum
from tests.results.helpers import make_result


def test_save_load_roundtrip_and_integrity(tmp_path):
    store = ResultStore(tmp_path)
    result = make_result("diam", 0, 60, 30, runs=2)
    path = store.save(result)
    run_id = result["run_id"]
    assert path.name == f"{run_id}.json" and store.contains(run_id) and store.state(run_id) == "stored"
    loaded = store.load(path, run_id)
    assert [r["confusion"] for r in loaded["runs"]] == [r["confusion"] for r in result["runs"]]
    assert loaded["schema_version"] == SCHEMA_VERSION
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind

    tampered = json.loads(path.read_text())
    tampered["aggregate"]["base"]["mean"] = 0.99
    (tmp_path / "bad.json").write_text(json.dumps(tampered))
    (tmp_path / "torn.json").write_text(path.read_text()[:40])
    results, problems = store.load_all()
    assert [r["run_id"] for r in results] == [run_id]
    reasons = {p.path.name: p.reason for p in problems}
    assert "checksum" in reasons["bad.json"] and "JSON" in reasons["torn.json"]
    with pytest.raises(ValueError, match="checksum"):
        store.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="not 0123"):  # a valid file, but another spec's
        store.load(path, "0123")


def _with_checksum(result: dict) -> str:
    result = dict(result, schema_version=SCHEMA_VERSION)
    result.pop("checksum", None)
    result["checksum"] = content_checksum(result)
    return json.dumps(result)


def test_every_kind_of_damage_is_skipped_with_its_reason(tmp_path, monkeypatch):
    """Truncation, nesting, missing or mistyped keys under a valid checksum, a FIFO, a device, a folder and a huge
    file: each is listed with its reason, none blocks (or hangs) the others."""
    monkeypatch.setattr(store_module, "MAX_RESULT_BYTES", 10 ** 6)
    store = ResultStore(tmp_path)
    good = make_result("diam", 0, 60, 30, runs=2)
    store.save(good)
    no_spec = {k: v for k, v in good.items() if k != "spec"}
    bad_runs = dict(good, runs=[{"run": 0, "confusion": [[1, 2], [3]]}])
    bad_fold = dict(good, spec=dict(good["spec"], fold="0"))
    (tmp_path / "torn.json").write_text(_with_checksum(good)[:-30])
    (tmp_path / "deep.json").write_text("[" * 200000)
    (tmp_path / "deep-valid.json").write_text("[" * 40 + "]" * 40)
    (tmp_path / "no-spec.json").write_text(_with_checksum(no_spec))
    (tmp_path / "bad-runs.json").write_text(_with_checksum(bad_runs))
    (tmp_path / "bad-fold.json").write_text(_with_checksum(bad_fold))
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "huge.json").write_text(" " * (10 ** 6 + 1))
    os.mkfifo(tmp_path / "fifo.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    (tmp_path / "folder.json").mkdir()
    results, problems = store.load_all()
    assert [r["run_id"] for r in results] == [good["run_id"]]
    reasons = {p.path.name: p.reason for p in problems}
    assert set(reasons) == {"torn.json", "deep.json", "deep-valid.json", "no-spec.json", "bad-runs.json",
                            "bad-fold.json", "list.json", "huge.json", "fifo.json", "zero.json", "folder.json"}
    expected = {"torn.json": "cannot be read as JSON", "deep.json": "nested deeper than 32 levels",
                "deep-valid.json": "nested deeper", "no-spec.json": "'spec' is missing",
                "bad-runs.json": "runs[0].confusion", "bad-fold.json": "spec.fold", "list.json": "schema version",
                "huge.json": "larger than", "fifo.json": "not a regular file (a FIFO)",
                "zero.json": "not a regular file (a character device)", "folder.json": "not a regular file (a folder)"}
    for name, reason in expected.items():
        assert reason in reasons[name], (name, reasons[name])
        assert len(reasons[name]) < 300 and "\n" not in reasons[name]


def test_set_aside_renames_never_deletes(tmp_path):
    store = ResultStore(tmp_path)
    path = store.path_for("abc")
    path.write_text("{torn")
    assert store.state("abc") == "damaged"
    aside = store.set_aside(path)
    assert aside.read_text() == "{torn" and not path.exists() and aside.name.startswith("abc.json.damaged-")
    assert store.state("abc") == "missing" and store.load_all() == ([], [])
    assert store.set_aside(path) is None  # already gone (another process set it aside): no error
