"""`run --segmenter hf:DIR` and `--segmenter smp:DIR` end to end: DIaM and BCM rows for models saved by their own
libraries, one leaderboard row per model in `report` and `export`, on the synthetic benchmark and on a miniature
PASCAL folder."""

import json

import pytest
from click.testing import CliRunner

from gfss_bench.cli import cli
from tests.models.test_segmenter_contract import _save_hf, _save_smp

RUN = ["run", "-m", "diam", "-m", "bcm", "-o", "diam.iterations=3", "-f", "0", "--runs", "1", "--device", "cpu"]


def _records(results):
    return [json.loads(path.read_text()) for path in sorted(results.glob("*.json"))]


@pytest.mark.slow
def test_hf_and_smp_models_give_diam_and_bcm_rows_in_report_and_export(tmp_path):
    hf, smp, results = tmp_path / "segformer", tmp_path / "deeplab", tmp_path / "results"
    _save_hf(hf / "fold0", "segformer")  # one subfolder per fold
    _save_smp(smp, "DeepLabV3Plus", decoder_channels=16)  # one folder for the fold asked for
    runner = CliRunner()
    for reference in (f"hf:{hf}", f"smp:{smp}"):
        # 40: SegFormer takes any side, DeepLabV3+ runs it padded to 48 (PSPNet would refuse it)
        ran = runner.invoke(cli, RUN + ["--queries", "6", "--image-size", "40", "--segmenter", reference,
                                        "--results-dir", str(results)])
        assert ran.exit_code == 0, ran.output
    records = _records(results)
    assert sorted((r["spec"]["method"], r["spec"]["segmenter"].split(":")[0]) for r in records) == [
        ("bcm", "hf"), ("bcm", "smp"), ("diam", "hf"), ("diam", "smp")]
    labels = {r["segmenter_label"] for r in records}
    assert labels == {f"hf:{hf.resolve()}", f"smp:{smp.resolve()}"}
    sources = {r["provenance"]["segmenter_source"]["path"] for r in records}
    assert sources == {str((hf / "fold0").resolve()), str(smp.resolve())}
    reported = runner.invoke(cli, ["report", "--results-dir", str(results)])
    assert reported.exit_code == 0, reported.output
    assert reported.output.count("│ @hf:") == 2 and reported.output.count("│ @smp:") == 2  # long labels wrap
    exported = runner.invoke(cli, ["export", "--results-dir", str(results), "--format", "csv", "--aggregated"])
    assert exported.exit_code == 0, exported.output
    rows = {line.split(",")[5] for line in exported.output.splitlines()[1:]}
    assert rows == {f"{method} @{label}" for method in ("diam(iterations=3)", "bcm") for label in labels}


@pytest.mark.slow
def test_an_smp_model_on_a_miniature_pascal_folder(tmp_path):
    from tests.test_real_pipeline import write_miniature_pascal

    root = tmp_path / "VOC2012"
    write_miniature_pascal(root)  # one support candidate per novel class
    runner = CliRunner()
    assert runner.invoke(cli, ["data", "prepare", "pascal", "--root", str(root)]).exit_code == 0
    _save_smp(tmp_path / "unet" / "fold0", "Unet", decoder_channels=(16, 8, 8, 8, 8))
    results = tmp_path / "results"
    ran = runner.invoke(cli, RUN + ["-b", "pascal5i", "--data-root", str(root), "--image-size", "65",
                                    "--min-support-pixels", "1000", "--segmenter", f"smp:{tmp_path / 'unet'}",
                                    "--results-dir", str(results)])
    assert ran.exit_code == 0, ran.output
    records = _records(results)
    assert sorted(r["spec"]["method"] for r in records) == ["bcm", "diam"]
    assert all(r["runs"][0]["num_queries"] == 4 for r in records)  # the 9 val images minus the 5 supports
