"""Benchmarks from YAML files: a 6-class benchmark on a small VOC-layout folder end to end through the CLI (data
verify, train --arch small, episodes, run -m diam -m bcm, report), the run id following the definition, and one
test per kind of bad file."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.cli import cli
from gfss_bench.errors import GFSSError
from gfss_bench.protocols import Benchmark, get_benchmark, register_benchmark, resolve_benchmark
from gfss_bench.protocols.benchmark_files import load_benchmark_file

CLASSES = ["road", "roof", "tree", "water", "field", "car"]
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40), (200, 40, 200), (40, 200, 200)]
MIN_SUPPORT_PIXELS = 300


def write_voc(root: Path, split: str, count: int, seed: int) -> list[str]:
    """`count` JPEG images with PNG labels in the VOC layout, and `<split>.txt`. Image i holds a filled rectangle of
    class 1 + i % 6 (in its colour, with noise); every other image also one of class 1 + (i + 3) % 6, which is never
    novel in the same fold (folds [1, 2, 3] and [4, 5, 6]), so each image is a single-novel support candidate.
    A 1-pixel void band surrounds each object. Returns the image names."""
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    names, lines = [], []
    for i in range(count):
        height, width = int(rng.integers(56, 81)), int(rng.integers(56, 81))
        image = rng.integers(90, 140, (height, width, 3)).astype(np.uint8)
        label = np.zeros((height, width), np.uint8)
        classes = [1 + i % 6] + ([1 + (i + 3) % 6] if i % 2 else [])
        for k, cls in enumerate(classes):
            h, w = int(rng.integers(20, 26)), int(rng.integers(20, 26))
            top = int(rng.integers(0, height - h)) if k == 0 else height - h
            left = int(rng.integers(0, width // 2 - w // 2)) if k == 0 else width - w
            label[max(top - 1, 0):top + h + 1, max(left - 1, 0):left + w + 1] = 255
            label[top:top + h, left:left + w] = cls
            image[top:top + h, left:left + w] = np.clip(
                np.array(COLOURS[cls - 1]) + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)
        name = f"{split}_{i:03d}"
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        Image.fromarray(label).save(root / "SegmentationClass" / f"{name}.png")
        names.append(name)
        lines.append(f"JPEGImages/{name}.jpg SegmentationClass/{name}.png\n")
    (root / f"{split}.txt").write_text("".join(lines))
    return names


def bench_yaml(name: str, folds=((1, 2, 3), (4, 5, 6)), **extra) -> str:
    lines = [f"name: {name}", "description: six toy classes", f"classes: {json.dumps(CLASSES)}",
             f"folds: {json.dumps([list(f) for f in folds])}"]
    lines += [f"{key}: {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


def invoke(*args):
    result = CliRunner().invoke(cli, list(args), terminal_width=200)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def test_yaml_benchmark_end_to_end(tmp_path):
    torch.set_num_threads(2)
    val_names = write_voc(tmp_path / "data", "val", 12, seed=1)
    write_voc(tmp_path / "data", "train", 24, seed=2)
    bench_file = tmp_path / "bench" / "toy6.yaml"
    bench_file.parent.mkdir()
    bench_file.write_text(bench_yaml("toy6-e2e", data_root="../data", image_size=41,
                                     min_support_pixels=MIN_SUPPORT_PIXELS))

    verified = invoke("data", "verify", str(bench_file))  # the data root comes from the file
    assert "road" in verified.output and "OK: train 24 images, val 12 images" in verified.output

    out = tmp_path / "ckpt"
    trained = invoke("train", "-b", str(bench_file), "--arch", "small", "--steps", "4", "-p", "practical",
                     "--device", "cpu", "--out", str(out))
    folder = out / "toy6-e2e-practical"
    assert (folder / "fold0.pt").is_file() and (folder / "fold1.pt").is_file()
    assert f"--checkpoint {folder}" in trained.output.replace("\n", "")
    manifest = json.loads((folder / "fold1.json").read_text())
    assert manifest["config"]["novel_classes"] == [4, 5, 6] and manifest["config"]["arch"]["num_outputs"] == 4
    assert manifest["config"]["benchmark_digest"] == get_benchmark("toy6-e2e").digest

    listed = invoke("episodes", "-b", str(bench_file), "--runs", "2", "--format", "json")
    episodes_file = tmp_path / "episodes.json"
    episodes_file.write_text(listed.stdout)
    documents = {document["fold"]: document for document in json.loads(listed.stdout)}
    assert sorted(documents) == [0, 1]

    results = tmp_path / "results"
    invoke("run", "-b", str(bench_file), "-m", "diam", "-m", "bcm", "-o", "diam.iterations=10", "-o",
           "bcm.c_grid_size=2", "-o", "bcm.cv_folds=2", "--runs", "2", "--checkpoint", str(folder), "--device", "cpu",
           "--episodes", str(episodes_file), "--results-dir", str(results))
    records = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    assert sorted((r["spec"]["method"], r["spec"]["fold"]) for r in records) == [
        ("bcm", 0), ("bcm", 1), ("diam", 0), ("diam", 1)]
    labels = {name: np.array(Image.open(tmp_path / "data" / "SegmentationClass" / f"{name}.png"))
              for name in val_names}
    for record in records:
        fold = record["spec"]["fold"]
        novel = [1, 2, 3] if fold == 0 else [4, 5, 6]
        base = [c for c in range(1, 7) if c not in novel]
        assert record["spec"]["benchmark"] == "toy6-e2e"
        assert record["spec"]["benchmark_digest"] == get_benchmark("toy6-e2e").digest
        assert record["spec"]["evaluation"]["min_support_pixels"] == MIN_SUPPORT_PIXELS
        assert record["class_names"] == ["background"] + [CLASSES[c - 1] for c in base + novel]
        for run, listed_run in zip(record["runs"], documents[fold]["runs"], strict=True):
            assert run["support_images"] == list(listed_run["supports"].values())  # what `episodes` listed
            assert list(listed_run["supports"]) == [CLASSES[c - 1] for c in novel]
            assert np.array(run["confusion"]).shape == (7, 7)
            for cls, names in zip(novel, run["support_images"]):
                (name,) = names  # 1 shot
                assert (labels[name] == cls).sum() >= MIN_SUPPORT_PIXELS
            assert run["num_queries"] == len(val_names) - 3  # every val image holds a class; 3 are supports
            assert np.array(run["confusion"]).sum() > 0

    reported = invoke("report", "--results-dir", str(results), "-b", str(bench_file))
    assert "toy6-e2e" in reported.output and "diam" in reported.output and "bcm" in reported.output


def test_the_run_id_follows_the_definition(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(bench_yaml("toy6-digest"))
    first = RunSpec.create("imprint", resolve_benchmark(str(path)).name, 0, "practical", 1)
    assert resolve_benchmark(str(path)) is get_benchmark("toy6-digest")  # re-reading an unchanged file keeps it
    path.write_text(bench_yaml("toy6-digest", folds=((4, 5, 6), (1, 2, 3))))
    second = RunSpec.create("imprint", resolve_benchmark(str(path)).name, 0, "practical", 1)
    assert get_benchmark("toy6-digest").novel_classes(0) == (4, 5, 6)  # the edited file replaced the definition
    assert first.evaluation == second.evaluation and first.benchmark_digest != second.benchmark_digest
    assert first.run_id != second.run_id
    path.write_text(bench_yaml("toy6-digest", folds=((4, 5, 6), (1, 2, 3)), description="other words"))
    assert resolve_benchmark(str(path)).digest == second.benchmark_digest  # the description changes no number
    assert RunSpec.create("imprint", "synthetic5i", 0, "practical", 1).benchmark_digest is None


def test_defaults_and_settings(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(bench_yaml("toy6-settings", image_size=97, queries=50, support_source="train",
                               single_novel_supports=False, batch_size=8))
    bench = load_benchmark_file(path)
    assert bench.data_root is None and bench.dataset == "toy6-settings" and bench.batch_size == 8
    assert bench.evaluation_settings().__dict__ == {"image_size": 97, "min_support_pixels": 887, "max_queries": 50,
                                                    "support_source": "train", "single_novel_supports": False}
    assert bench.shuffle_queries  # a subset of the queries is a random one
    path.write_text(bench_yaml("toy6-settings"))
    bench = load_benchmark_file(path)
    assert (bench.image_size, bench.min_support_pixels, bench.max_queries, bench.shuffle_queries) == (
        417, 16384, None, False)
    with pytest.raises(GFSSError, match="has no data_root; pass the folder"):
        CliRunner().invoke(cli, ["data", "verify", str(path)], catch_exceptions=False)


BAD_FILES = [
    ("name: x\nclasses: [a, b]\nfolds: [[1]]\nclases: [a]\n", "unknown key 'clases' (did you mean 'classes'?)"),
    ("name: x\nclasses: [a, b]\n", "missing key(s) folds"),
    ("classes: [a, b]\nfolds: [[1]]\n", "missing key(s) name"),
    ("name: x\nclasses: [a, b, c]\nfolds: [[1, 4]]\n", "folds[0] holds class id 4, outside 1..3"),
    ("name: x\nclasses: [a, b, c]\nfolds: [[0]]\n", "folds[0] holds class id 0, outside 1..3"),
    ("name: x\nclasses: [a, b, c]\nfolds: [[1, 1]]\n", "folds[0] lists class id 1 twice"),
    ("name: x\nclasses: [a, b, c]\nfolds: [[1], []]\n", "folds[1] is empty"),
    ("name: x\nclasses: [a, b, c]\nfolds: []\n", "'folds' is empty"),
    ("name: x\nclasses: [a, b, c, d]\nfolds: [[1, 2], [2, 3]]\n", "class id 2 (b) is novel in folds[0] and folds[1]"),
    ("name: x\nclasses: [a, b]\nfolds: [[1, 2]]\n", "folds[0] makes every class novel"),
    ("name: x\nclasses: a\nfolds: [[1]]\n", "'classes' must be a list, got 'a'"),
    ("name: x\nclasses: []\nfolds: [[1]]\n", "'classes' is empty"),
    ("name: x\nclasses: [a, a]\nfolds: [[1]]\n", "'classes' names 'a' twice (ids 1 and 2)"),
    ("name: x\nclasses: [a, 3]\nfolds: [[1]]\n", "classes[1] (class id 2) must be a non-empty name, got 3"),
    ("name: x\nclasses: [a, b]\nfolds: [1]\n", "folds[0] must be a list of novel class ids, got 1"),
    ("name: x\nclasses: [a, b]\nfolds: [[a]]\n", "folds[0] must hold integer class ids, got 'a'"),
    ("name: x\nclasses: [a, b]\nfolds: [[true]]\n", "folds[0] must hold integer class ids, got True"),
    ("name: 7\nclasses: [a, b]\nfolds: [[1]]\n", "'name' must be a string, got 7"),
    ("name: my bench\nclasses: [a, b]\nfolds: [[1]]\n", "'name' 'my bench' must be letters"),
    ("name: pascal5i\nclasses: [a, b]\nfolds: [[1]]\n", "'name' 'pascal5i' is a built-in benchmark"),
    ("name: x\nclasses: [a, b]\nfolds: [[1]]\nimage_size: big\n", "'image_size' must be an integer, got 'big'"),
    ("name: x\nclasses: [a, b]\nfolds: [[1]]\nimage_size: 4\n", "'image_size' must be between 9 and 4096"),
    ("name: x\nclasses: [a, b]\nfolds: [[1]]\nmin_support_pixels: 0\n", "'min_support_pixels' must be >= 1"),
    ("name: x\nclasses: [a, b]\nfolds: [[1]]\nqueries: many\n", "'queries' must be a positive integer or all"),
    ("name: x\nclasses: [a, b]\nfolds: [[1]]\nqueries: 0\n", "'queries' must be >= 1"),
    ("name: x\nclasses: [a, b]\nfolds: [[1]]\nsupport_source: test\n", "'support_source' 'test' is unknown"),
    ("name: x\nclasses: [a, b]\nfolds: [[1]]\nsingle_novel_supports: 1\n",
     "'single_novel_supports' must be true or false, got 1"),
    ("name: x\nclasses: [a, b]\nfolds: [[1]]\nbatch_size: 0\n", "'batch_size' must be >= 1"),
    ("name: x\nclasses: [a, b]\nfolds: [[1]]\ndata_root: 3\n", "'data_root' must be a string, got 3"),
    ("- name\n", "must be a YAML mapping"),
    ("name: [x\n", "is not valid YAML"),
]


@pytest.mark.parametrize("text, message", BAD_FILES)
def test_bad_benchmark_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(GFSSError) as error:
        resolve_benchmark(str(path))
    assert str(error.value).startswith(f"benchmark file {path}") and message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_benchmark_file_through_the_cli(tmp_path):
    """Every -b reports the file problem as one GFSSError line, prefixed with the option."""
    missing = tmp_path / "missing.yaml"
    for args in (["run"], ["train"], ["report"], ["export", "--format", "csv"], ["data", "verify"]):
        option = ["-b", str(missing)] if args != ["data", "verify"] else [str(missing)]
        result = CliRunner().invoke(cli, args + option)
        assert isinstance(result.exception, GFSSError), (args, result.output)
        assert f"benchmark file {missing} does not exist" in str(result.exception)
    result = CliRunner().invoke(cli, ["run", "-b", "toy"])
    assert isinstance(result.exception, GFSSError) and "or pass a benchmark YAML file" in str(result.exception)


def test_a_name_is_defined_by_one_file(tmp_path):
    (tmp_path / "a.yaml").write_text(bench_yaml("toy6-clash"))
    (tmp_path / "b.yaml").write_text(bench_yaml("toy6-clash"))
    resolve_benchmark(str(tmp_path / "a.yaml"))
    with pytest.raises(GFSSError, match="'name' 'toy6-clash' is already defined by .*a.yaml; choose another name"):
        resolve_benchmark(str(tmp_path / "b.yaml"))


def test_register_benchmark_checks_the_definition():
    bench = Benchmark("toy-python", "defined in Python", "toy", ("a", "b", "c"), ((1,), (2,)), image_size=65)
    assert register_benchmark(bench) is bench and get_benchmark("toy-python") is bench
    assert bench.digest is not None and get_benchmark("pascal5i").digest is None
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark(bench)
    overlapping = Benchmark("toy-python-2", "", "toy", ("a", "b", "c"), ((1, 2), (2,)))
    with pytest.raises(GFSSError, match="benchmark 'toy-python-2': class id 2 .* is novel in fold_novel_classes"):
        register_benchmark(overlapping)


def test_sweep_takes_a_benchmark_file(tmp_path):
    (tmp_path / "b.yaml").write_text(bench_yaml("toy6-sweep"))
    (tmp_path / "sweep.yaml").write_text(f"methods: [imprint]\nbenchmarks: [{tmp_path / 'b.yaml'}]\nruns: 1\n"
                                         "device: cpu\n")
    listed = invoke("sweep", str(tmp_path / "sweep.yaml"), "--dry-run", "--results-dir", str(tmp_path / "r"))
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and all(" missing " in line and " toy6-sweep practical fold " in line for line in lines)
