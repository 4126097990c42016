"""Bad data through the real loader and runner: every problem names the file and the fix, or, with
--skip-bad-images, is left out with a warning and recorded in the result. Never a silently wrong metric."""

import dataclasses
import shutil

import numpy as np
import pytest
from PIL import Image

from gfss_bench.evaluation import runner
from gfss_bench.evaluation import spec as spec_module
from gfss_bench.data.datasets import SegmentationList
from gfss_bench.evaluation.runner import execute
from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.data.synthetic import ensure_synthetic_dataset
from gfss_bench.errors import GFSSError
from gfss_bench.protocols import get_benchmark
from gfss_bench.results.store import ResultStore
from tests.evaluation.test_runner import CountingLoader, TinySegmenter

NUM_IMAGES = 80  # the first 80 val images hold a support candidate for every novel class of fold 0


@pytest.fixture
def data_root(tmp_path):
    """A copy of the first val images of the synthetic dataset, as a real (--data-root) dataset."""
    source = ensure_synthetic_dataset()
    root = tmp_path / "data"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    lines = (source / "val.txt").read_text().splitlines()[:NUM_IMAGES]
    for line in lines:
        for rel in line.split():
            shutil.copyfile(source / rel, root / rel)
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def on_disk_benchmark(monkeypatch):
    """synthetic5i read from --data-root (as a real benchmark is), so tests can damage the files."""
    bench = dataclasses.replace(get_benchmark("synthetic5i"), generated=False)
    monkeypatch.setattr(runner, "get_benchmark", lambda name: bench)
    return bench


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def item(root, index):
    image, label = (root / "val.txt").read_text().splitlines()[index].split()
    return root / image, root / label


def spec(**kwargs):
    return RunSpec.create("imprint", "synthetic5i", 0, "practical", 1, runs=kwargs.pop("runs", 1), **kwargs)


def test_truncated_jpeg_names_file_and_fix(data_root):
    image, _ = item(data_root, 3)
    truncate(image)
    split = SegmentationList(data_root, data_root / "val.txt")
    with pytest.raises(GFSSError) as error:
        split.load(3)
    message = str(error.value)
    assert str(image) in message and "truncated" in message and "--skip-bad-images" in message
    assert [i for i, _ in split.find_bad_items()] == [3]


def test_missing_image_names_file_and_fix(data_root):
    image, _ = item(data_root, 5)
    image.unlink()
    with pytest.raises(GFSSError, match="does not exist.*remove its line from the list file") as error:
        SegmentationList(data_root, data_root / "val.txt").load(5)
    assert str(image) in str(error.value)


def test_label_outside_benchmark_names_label_file(data_root, on_disk_benchmark, tmp_path):
    _, label = item(data_root, 7)
    with Image.open(label) as png:
        values = np.array(png)
        palette = png.getpalette()
    values[0, 0] = 42
    bad = Image.fromarray(values, mode="P")
    bad.putpalette(palette)
    bad.save(label)
    with pytest.raises(GFSSError) as error:
        execute([spec()], ResultStore(tmp_path / "r"), segmenter_loader=CountingLoader(), data_root=data_root)
    assert str(label) in str(error.value) and "class id 42" in str(error.value)
    assert not (tmp_path / "r").exists()


def test_novel_class_without_support_candidate_through_runner(data_root, monkeypatch, tmp_path):
    bench = dataclasses.replace(get_benchmark("synthetic5i"), generated=False, min_support_pixels=10 ** 9)
    monkeypatch.setattr(runner, "get_benchmark", lambda name: bench)
    monkeypatch.setattr(spec_module, "get_benchmark", lambda name: bench)  # the spec takes its settings from it
    with pytest.raises(GFSSError, match="has no support candidate.*lower --min-support-pixels"):
        execute([spec()], ResultStore(tmp_path / "r"), segmenter_loader=CountingLoader(), data_root=data_root)
    assert not (tmp_path / "r").exists()


def test_skip_bad_images_records_them_and_equals_the_clean_list(data_root, on_disk_benchmark, tmp_path):
    lines = (data_root / "val.txt").read_text().splitlines()
    # clean reference: the same list without the three items damaged below
    clean_root = tmp_path / "clean"
    shutil.copytree(data_root, clean_root)
    (clean_root / "val.txt").write_text("\n".join(l for i, l in enumerate(lines) if i not in (2, 4, 6)) + "\n")
    [reference] = execute([spec(runs=2)], ResultStore(tmp_path / "ref"), segmenter_loader=CountingLoader(),
                          data_root=clean_root)
    assert reference["skipped_images"] == []

    truncate(item(data_root, 2)[0])  # truncated JPEG
    item(data_root, 4)[0].unlink()  # missing image
    _, label = item(data_root, 6)  # label of another size than its image
    with Image.open(label) as png:
        png.resize((png.width + 3, png.height)).save(label)

    with pytest.raises(GFSSError, match="--skip-bad-images"):  # without the flag: an error, nothing stored
        execute([spec(runs=2)], ResultStore(tmp_path / "r"), segmenter_loader=CountingLoader(), data_root=data_root)
    assert not (tmp_path / "r").exists()

    messages = []
    store = ResultStore(tmp_path / "r")
    [result] = execute([spec(runs=2)], store, segmenter_loader=CountingLoader(), data_root=data_root,
                       skip_bad_images=True, log=messages.append)
    assert any(m.startswith("warning: skipped 3 bad image(s)") for m in messages), messages
    names = [line.split()[0].split("/")[-1][:-4] for line in lines]
    assert [s["name"] for s in result["skipped_images"]] == [names[2], names[4], names[6]]
    assert "is 97" not in result["skipped_images"][0]["reason"] and "truncated" in result["skipped_images"][0]["reason"]
    stored = store.load(store.path_for(result["run_id"]))  # part of the checksummed result
    assert len(stored["skipped_images"]) == 3
    assert [r["confusion"] for r in stored["runs"]] == [r["confusion"] for r in reference["runs"]]
    assert [r["support_images"] for r in stored["runs"]] == [r["support_images"] for r in reference["runs"]]


def test_checkpoint_for_another_number_of_classes(data_root, on_disk_benchmark, tmp_path):
    def wrong(spec, device):
        return TinySegmenter(7).eval()

    with pytest.raises(GFSSError, match="has 7 classifier outputs but synthetic5i fold 0 needs 16"):
        execute([spec()], ResultStore(tmp_path / "r"), segmenter_loader=wrong, data_root=data_root)


def test_nan_during_adaptation_stops_names_episode_and_method_and_stores_nothing(
        data_root, on_disk_benchmark, tmp_path, monkeypatch):
    from gfss_bench.methods import build_method

    class DivergesInSecondRun:
        is_oracle = False

        def __init__(self):
            self.inner, self.fits = build_method("imprint"), 0

        def fit(self, task):
            self.fits += 1
            fitted, run = self.inner.fit(task), self.fits

            class Fitted:
                def predict(self, batch):
                    probs = fitted.predict(batch)
                    return probs * float("nan") if run == 2 else probs

            return Fitted()

    monkeypatch.setattr(RunSpec, "build", lambda self: DivergesInSecondRun())
    store = ResultStore(tmp_path / "r")
    the_spec = spec(runs=3)
    with pytest.raises(GFSSError) as error:
        execute([the_spec], store, segmenter_loader=CountingLoader(), data_root=data_root)
    message = str(error.value)
    assert "method 'imprint'" in message and "run 1" in message and "episode seed" in message
    assert "nothing was stored" in message
    assert not store.contains(the_spec.run_id) and not store.partial_path_for(the_spec.run_id).exists()
    assert list(store.root.iterdir()) == []
