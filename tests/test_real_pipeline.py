"""The real-benchmark path end to end on a miniature PASCAL VOC folder: data prepare -> data verify -> train
PSPNet-ResNet50 -> run with the trained checkpoint folder -> report."""

import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from gfss_bench.cli import cli

VAL = [f"2010_{i:06d}" for i in range(9)]
TRAIN = [f"2008_{i:06d}" for i in range(6)]


def _write(root, stem, classes, seed):
    """A 96x128 JPEG and its label: one 40x48 block per class (ids in `classes`), a void border."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    label = np.zeros((96, 128), np.uint8)
    for k, cls in enumerate(classes):
        top, left = 8 + 44 * (k // 2), 8 + 60 * (k % 2)
        label[top:top + 40, left:left + 48] = cls
        image[top:top + 40, left:left + 48] = (40 * cls) % 256  # a class-dependent colour
    label[0] = 255
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClassAug").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg", quality=95)
    Image.fromarray(label).save(root / "SegmentationClassAug" / f"{stem}.png")


def write_miniature_pascal(root):
    """A VOC-layout folder: 9 val images (fold 0: novel 1..5, one support candidate each; base 6..20 elsewhere)
    and 6 train images, with the official val list."""
    for i, stem in enumerate(VAL):
        _write(root, stem, [i + 1, 7] if i < 5 else [6 + i, 15], seed=i)
    for i, stem in enumerate(TRAIN):
        _write(root, stem, [6 + i, 12, 1 + i % 5], seed=100 + i)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VAL) + "\n")


def test_prepare_verify_train_run_report_on_a_miniature_pascal(tmp_path):
    root = tmp_path / "VOC2012"
    write_miniature_pascal(root)
    runner = CliRunner()

    prepared = runner.invoke(cli, ["data", "prepare", "pascal", "--root", str(root)])
    assert prepared.exit_code == 0, prepared.output
    assert len((root / "val.txt").read_text().splitlines()) == 9
    assert len((root / "train.txt").read_text().splitlines()) == 6
    verified = runner.invoke(cli, ["data", "verify", "pascal5i", "--root", str(root)])
    assert verified.exit_code == 0, verified.output

    out = tmp_path / "checkpoints"
    trained = runner.invoke(cli, ["train", "-b", "pascal5i", "-f", "0", "-p", "practical", "--data-root", str(root),
                                  "--backbone-weights", "none", "--steps", "1", "--batch-size", "2", "--crop-size", "65",
                                  "--no-eval", "--device", "cpu", "--out", str(out)])
    assert trained.exit_code == 0, trained.output
    assert (out / "pascal5i-practical" / "fold0.pth").is_file()

    results = tmp_path / "results"
    ran = runner.invoke(cli, ["run", "-m", "base", "-m", "diam", "-o", "diam.iterations=3", "-b", "pascal5i", "-f", "0",
                              "--runs", "2", "--data-root", str(root), "--checkpoint", str(out / "pascal5i-practical"),
                              "--image-size", "65", "--min-support-pixels", "1000", "--device", "cpu",
                              "--results-dir", str(results)])
    assert ran.exit_code == 0, ran.output
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    assert sorted(r["spec"]["method"] for r in records) == ["base", "diam"]
    for record in records:
        assert record["spec"]["segmenter"].startswith("checkpoint:")
        assert record["class_names"][1:16] == ["bus", "car", "cat", "chair", "cow", "diningtable", "dog", "horse",
                                               "motorcycle", "person", "pottedplant", "sheep", "sofa", "train", "tv"]
        assert record["class_names"][16:] == ["airplane", "bicycle", "bird", "boat", "bottle"]  # novel, fold 0
        for run in record["runs"]:
            assert [names[0] for names in run["support_images"]] == VAL[:5]  # the only candidate of each class
            assert run["num_queries"] == 4  # the 9 val images minus the 5 supports
            confusion = np.array(run["confusion"])
            assert confusion.shape == (21, 21) and confusion.sum() > 0
    base = next(r for r in records if r["spec"]["method"] == "base")
    assert np.array(base["runs"][0]["confusion"])[:, 16:].sum() == 0  # the base segmenter never predicts novel
    reported = runner.invoke(cli, ["report", "--results-dir", str(results), "-b", "pascal5i"], terminal_width=200)
    assert reported.exit_code == 0 and "diam" in reported.output and "base" in reported.output

    # The same options as a sweep: one spec builder, so the same run ids (all stored already); a new shot count
    # is the only work left, and the sweep's dry run says so before it runs.
    sweep_file = tmp_path / "sweep.yaml"
    settings = {"method": ["base", "diam"], "option": {"diam": {"iterations": 3}}, "benchmark": "pascal5i",
                "fold": [0], "runs": 2, "data_root": str(root), "checkpoint": str(out / "pascal5i-practical"),
                "image_size": 65, "min_support_pixels": 1000, "device": "cpu", "results_dir": str(results)}
    sweep_file.write_text(json.dumps(settings))
    dry = runner.invoke(cli, ["sweep", str(sweep_file), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert sorted(line.split()[0] for line in dry.output.splitlines()) == sorted(r["run_id"] for r in records)
    assert all(line.split()[1] == "stored" for line in dry.output.splitlines())
    sweep_file.write_text(json.dumps(dict(settings, shot=[1, 2])))
    states = [line.split()[1] for line in runner.invoke(cli, ["sweep", str(sweep_file), "--dry-run"]).output.splitlines()]
    assert sorted(states) == ["missing", "missing", "stored", "stored"]
    swept = runner.invoke(cli, ["sweep", str(sweep_file)])
    assert swept.exit_code == 0, swept.output
    assert len(list(results.glob("*.json"))) == 4
    assert {p.name for p in results.glob("*.json")} >= {f"{r['run_id']}.json" for r in records}
