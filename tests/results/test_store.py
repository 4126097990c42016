import json

import pytest

from gfss_bench.results.store import SCHEMA_VERSION, ResultStore


def test_save_load_roundtrip_and_integrity(tmp_path):
    store = ResultStore(tmp_path)
    path = store.save({"run_id": "abc", "value": [1, 2, 3]})
    assert path.name == "abc.json" and store.contains("abc")
    loaded = store.load(path)
    assert loaded["value"] == [1, 2, 3] and loaded["schema_version"] == SCHEMA_VERSION
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind

    tampered = json.loads(path.read_text())
    tampered["value"] = [9]
    (tmp_path / "bad.json").write_text(json.dumps(tampered))
    (tmp_path / "torn.json").write_text(path.read_text()[:40])
    results, problems = store.load_all()
    assert [r["run_id"] for r in results] == ["abc"]
    reasons = {p.path.name: p.reason for p in problems}
    assert "checksum" in reasons["bad.json"] and "JSON" in reasons["torn.json"]
    with pytest.raises(ValueError, match="checksum"):
        store.load(tmp_path / "bad.json")
