"""Per-query records: stored by the real runner next to each result, summing to the runs' confusion totals, and
reported per query, worst/best and A-vs-B."""

import csv
import gzip
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from gfss_bench.cli import cli, main
from gfss_bench.results.store import ResultStore
from gfss_bench.scoring import query_confusions, score_probabilities

@pytest.fixture(scope="module")
def stored(per_query_results):
    return per_query_results[0]


@pytest.fixture(scope="module")
def specs(per_query_results):
    return per_query_results[1]


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _totals(confusion):
    confusion = np.asarray(confusion)
    intersection = np.diag(confusion)
    return intersection, confusion.sum(0) + confusion.sum(1) - intersection


def test_query_confusions_sum_to_the_batch_confusion():
    generator = torch.Generator().manual_seed(3)
    probs = torch.rand(5, 4, 7, 7, generator=generator)
    labels = torch.randint(0, 4, (5, 25, 25), generator=generator)
    labels[:, :3] = 255
    per_query = query_confusions(probs, labels, 4, chunk=2)
    assert per_query.shape == (5, 4, 4)
    assert torch.equal(per_query.sum(0), score_probabilities(probs, labels, 4))
    assert int(per_query[1].sum()) == int((labels[1] != 255).sum())


def test_records_sum_to_each_runs_totals_and_are_sparse(stored, specs):
    store = ResultStore(stored)
    for spec in specs:
        result = store.load(store.path_for(spec.run_id))
        assert not any("queries" in run for run in result["runs"])  # kept out of the result file, in the sidecar
        records = store.load_query_records(result)
        assert [r["run"] for r in records] == [0, 1]
        for run, kept in zip(result["runs"], records):
            assert len(kept["queries"]) == run["num_queries"]
            size = len(run["confusion"])
            intersection, union = np.zeros(size, np.int64), np.zeros(size, np.int64)
            for query in kept["queries"]:
                assert all(u > 0 for u in query["union"])  # only the classes present
                np.add.at(intersection, query["classes"], query["intersection"])
                np.add.at(union, query["classes"], query["union"])
            expected = _totals(run["confusion"])
            assert np.array_equal(intersection, expected[0]) and np.array_equal(union, expected[1])


def test_per_query_csv_sums_to_the_runs_totals(stored, specs):
    rows = list(csv.DictReader(io.StringIO(invoke("report", "--results-dir", str(stored), "--per-query",
                                                  "--format", "csv"))))
    assert {"method", "benchmark", "fold", "shot", "run", "query", "class", "intersection", "union",
            "iou"} <= set(rows[0])
    store = ResultStore(stored)
    for spec in specs:
        result = store.load(store.path_for(spec.run_id))
        for run in result["runs"]:
            mine = [r for r in rows if r["method"] == spec.method and int(r["run"]) == run["run"]]
            intersection, union = _totals(run["confusion"])
            for index, name in enumerate(result["class_names"]):
                cells = [r for r in mine if r["class"] == name]
                assert sum(int(r["intersection"]) for r in cells) == intersection[index]
                assert sum(int(r["union"]) for r in cells) == union[index]


def _query_mious(store, spec):
    """(run, query) -> mIoU % over the classes present, from the sidecar, computed here."""
    records = store.load_query_records(store.load(store.path_for(spec.run_id)))
    return {(kept["run"], q["query"]): 100 * float(np.mean(np.array(q["intersection"]) / np.array(q["union"])))
            for kept in records for q in kept["queries"]}


def test_worst_best_and_compare_follow_the_per_query_miou(stored, specs):
    store = ResultStore(stored)
    base, imprint = (_query_mious(store, spec) for spec in specs)
    worst = list(csv.DictReader(io.StringIO(invoke("report", "--results-dir", str(stored), "-m", "imprint",
                                                   "--worst", "3", "--format", "csv"))))
    assert [float(r["miou"]) for r in worst] == pytest.approx(sorted(imprint.values())[:3], abs=1e-3)
    best = list(csv.DictReader(io.StringIO(invoke("report", "--results-dir", str(stored), "--best", "2",
                                                  "--format", "csv"))))
    assert [float(r["miou"]) for r in best if r["method"] == "base"] == pytest.approx(
        sorted(base.values(), reverse=True)[:2], abs=1e-3)
    beats = list(csv.DictReader(io.StringIO(invoke("report", "--results-dir", str(stored), "--compare", "imprint",
                                                   "base", "--best", "4", "--format", "csv"))))
    differences = sorted((imprint[key] - base[key] for key in imprint), reverse=True)[:4]
    assert [float(r["difference"]) for r in beats] == pytest.approx(differences, abs=1e-3)
    assert "worst queries" in invoke("report", "--results-dir", str(stored), "--worst", "1")


def test_results_without_records_still_report(stored, specs, tmp_path):
    store, old = ResultStore(stored), ResultStore(tmp_path)
    for spec in specs:  # as stored before per-query records existed
        result = store.load(store.path_for(spec.run_id))
        old.save({k: v for k, v in result.items() if k not in ("query_records", "checksum")})
    assert "imprint" in invoke("report", "--results-dir", str(tmp_path))
    result = CliRunner().invoke(cli, ["report", "--results-dir", str(tmp_path), "--per-query",
                                                     "--format", "csv"])
    assert result.exit_code == 0 and "without per-query records" in result.stderr
    assert result.stdout.strip().count("\n") == 0  # the header only


def test_a_changed_sidecar_is_one_clear_error(stored, specs, tmp_path, monkeypatch, capsys):
    store = ResultStore(stored)
    for spec in specs:
        (tmp_path / f"{spec.run_id}.json").write_bytes(store.path_for(spec.run_id).read_bytes())
        body = json.loads(gzip.decompress(store.queries_path_for(spec.run_id).read_bytes()))
        body["runs"][0]["queries"][0]["intersection"][0] += 1
        ResultStore(tmp_path).queries_path_for(spec.run_id).write_bytes(gzip.compress(json.dumps(body).encode()))
    monkeypatch.setattr("sys.argv", ["gfss-bench", "report", "--results-dir", str(tmp_path), "--per-query"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "checksum mismatch" in error and "--force" in error and "Traceback" not in error


def test_a_truncated_or_foreign_sidecar_is_refused(stored, specs, tmp_path):
    store, copy = ResultStore(stored), ResultStore(tmp_path)
    result = store.load(store.path_for(specs[0].run_id))
    data = store.queries_path_for(specs[0].run_id).read_bytes()
    for damaged in (data[:len(data) // 2], data[:10] + bytes(len(data) - 10), b"not gzip at all"):
        copy.queries_path_for(result["run_id"]).write_bytes(damaged)
        with pytest.raises(ValueError, match="cannot be read"):
            copy.load_query_records(result)
    copy.queries_path_for(result["run_id"]).write_bytes(store.queries_path_for(specs[1].run_id).read_bytes())
    with pytest.raises(ValueError, match="checksum mismatch"):  # another result's records
        copy.load_query_records(result)
    copy.queries_path_for(result["run_id"]).unlink()
    with pytest.raises(ValueError, match="cannot be read"):
        copy.load_query_records(result)
