"""A report row is the segmenter the user chose (`segmenter_label`), not each fold's weights id: a checkpoint folder
over all folds is one complete row, two folders are two rows, and results stored before the label keep theirs."""

import csv
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from gfss_bench.cli import cli
from gfss_bench.models import zoo
from gfss_bench.models.families import SEGMENTER_FAMILIES
from gfss_bench.results.board import Leaderboard
from gfss_bench.results.compare import paired_differences, summarize
from gfss_bench.results.store import ResultStore, content_checksum

from .helpers import CURRENT, make_result

BENCH = "synthetic10i"  # 2 folds


def invoke(*args) -> str:
    result = CliRunner().invoke(cli, list(args), terminal_width=250)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def checkpoint_folder(path: Path, protocol: str) -> Path:
    """fold0.pth and fold1.pth: the shipped synthetic10i weights of a protocol (loadable as pspnet checkpoints)."""
    path.mkdir()
    for fold in range(2):
        shutil.copy(zoo.WEIGHTS_DIR / f"{zoo.weights_name(BENCH, fold, protocol)}.pt", path / f"fold{fold}.pth")
    return path.resolve()


def sha16(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def aggregated(results_dir: Path) -> list[dict]:
    text = invoke("export", "--results-dir", str(results_dir), "--format", "csv", "--aggregated")
    return [row for row in csv.DictReader(io.StringIO(text)) if row["row"] == "result"]


@pytest.mark.slow  # ~18 s: PSPNet-ResNet50 runs from a checkpoint folder
def test_a_checkpoint_folder_is_one_row(tmp_path, monkeypatch):
    """Fold 0 run with `--checkpoint ./A`, fold 1 with its absolute path (one row all the same); folder B, other
    weights, is a second row; stripping the label (a schema-2 file) gives the old per-fold rows back."""
    monkeypatch.chdir(tmp_path)
    folder_a = checkpoint_folder(tmp_path / "A", "practical")
    folder_b = checkpoint_folder(tmp_path / "B", "standard")  # other bytes: other weights ids, other run ids
    results_dir = tmp_path / "results"
    run = ["run", "--benchmark", BENCH, "--runs", "1", "--method", "base", "--device", "cpu", "--queries", "4",
           "--results-dir", str(results_dir)]
    invoke(*run, "--fold", "0", "--checkpoint", "./A")
    invoke(*run, "--fold", "1", "--checkpoint", str(folder_a))
    stored = {r["spec"]["fold"]: r for r in ResultStore(results_dir).load_all()[0]}
    for fold, result in stored.items():  # the exact weights stay in the spec, and so in the run id
        assert result["spec"]["segmenter"] == f"checkpoint:{sha16(folder_a / f'fold{fold}.pth')}"
        assert result["segmenter_label"] == f"pspnet:{folder_a}" and result["schema_version"] == 3

    (row,) = aggregated(results_dir)
    assert (row["folds"], row["complete"], row["segmenter"]) == ("0,1", "True", f"pspnet:{folder_a}")
    assert row["segmenter_ids"] == ",".join(stored[f]["spec"]["segmenter"] for f in (0, 1))
    assert float(row["base_miou"]) == pytest.approx(100 * (stored[0]["aggregate"]["base"]["mean"]
                                                           + stored[1]["aggregate"]["base"]["mean"]) / 2, abs=0.006)
    table = invoke("report", "--results-dir", str(results_dir))
    assert f"base @pspnet:{folder_a}" in table and "2/2" in table and "incomplete" not in table

    invoke(*run, "--checkpoint", "B")
    rows = {r["segmenter"]: r for r in aggregated(results_dir)}
    assert set(rows) == {f"pspnet:{folder_a}", f"pspnet:{folder_b}"}
    assert all(r["complete"] == "True" and r["folds"] == "0,1" for r in rows.values())

    for path in results_dir.glob("*.json"):  # folder A's results as schema 2 wrote them: no label
        result = json.loads(path.read_text())
        if result["segmenter_label"] == f"pspnet:{folder_a}":
            del result["segmenter_label"]
            result = dict(result, schema_version=2)
            result["checksum"] = content_checksum(result)
            path.write_text(json.dumps(result))
    rows = {r["segmenter"]: r for r in aggregated(results_dir)}
    assert set(rows) == {f"pspnet:{folder_b}"} | {stored[f]["spec"]["segmenter"] for f in (0, 1)}
    assert [rows[stored[f]["spec"]["segmenter"]]["folds"] for f in (0, 1)] == ["0", "1"]
    assert "incomplete" in invoke("report", "--results-dir", str(results_dir))


def test_family_labels_name_the_choice_not_the_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    pspnet, torchvision = SEGMENTER_FAMILIES.get("pspnet"), SEGMENTER_FAMILIES.get("torchvision")
    absolute = str(tmp_path.resolve() / "ckpt")
    assert pspnet.label("./ckpt") == pspnet.label("ckpt") == pspnet.label(absolute) == f"pspnet:{absolute}"
    assert pspnet.label("hub-name") == "pspnet:hub-name"  # not a path: kept as given
    assert torchvision.label("fcn_resnet50=./ckpt") == f"torchvision:fcn_resnet50={absolute}"
    assert SEGMENTER_FAMILIES.get("builtin").label("") == "builtin"


def labelled(method, fold, base, novel, segmenter, label, **kwargs):
    return make_result(method, fold, base, novel, benchmark=BENCH, segmenter=segmenter, spec_extra=CURRENT,
                       extra={"segmenter_label": label}, **kwargs)


def test_compare_pairs_each_fold_on_its_weights_and_pools_the_label():
    """diam and imprint on folder X (weights a, b for folds 0, 1): 2 folds x 5 runs pair up in one summary;
    imprint's fold 1 on other weights (c) under the same label never pairs with diam's fold 1."""
    results = [labelled("diam", 0, 60, 35, "checkpoint:a", "pspnet:/x"),
               labelled("diam", 1, 60, [30 + r for r in range(5)], "checkpoint:b", "pspnet:/x"),
               labelled("imprint", 0, 60, 30, "checkpoint:a", "pspnet:/x"),
               labelled("imprint", 1, 60, 30, "checkpoint:b", "pspnet:/x")]
    pairs, _ = paired_differences(results, "diam", "imprint")
    assert len(pairs) == 10 and set(pairs["segmenter"]) == {"pspnet:/x"}
    assert set(zip(pairs["fold"], pairs["segmenter_id"])) == {(0, "checkpoint:a"), (1, "checkpoint:b")}
    novel = summarize(pairs).set_index("metric").loc["novel"]
    assert (novel["folds"], novel["n"]) == ("0,1", 10)
    assert novel["mean"] == pytest.approx((5 * 5 + sum(range(5))) / 10)  # fold 0: +5 each run, fold 1: +r
    results[3] = labelled("imprint", 1, 60, 30, "checkpoint:c", "pspnet:/x")
    pairs, _ = paired_differences(results, "diam", "imprint")
    assert len(pairs) == 5 and set(pairs["fold"]) == {0}


def test_a_fold_stored_twice_under_one_label_is_not_complete():
    """Weights retrained in the same folder: fold 0 held by two results of one label is flagged, never complete."""
    results = [labelled("diam", 0, 60, 30, "checkpoint:a", "pspnet:/x"),
               labelled("diam", 0, 70, 40, "checkpoint:a2", "pspnet:/x"),
               labelled("diam", 1, 60, 30, "checkpoint:b", "pspnet:/x")]
    (group,) = Leaderboard.build(results).groups
    (row,) = group.own_rows()
    assert row.incomplete and row.folds == (0, 0, 1) and not row.best_metrics
    assert any("fold 0 stored more than once" in note and "checkpoint:a,checkpoint:a2,checkpoint:b" in note
               for note in group.notes)
