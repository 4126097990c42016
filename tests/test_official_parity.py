"""Issue 10: `gfss-bench run -b pascal5i --checkpoint <DIaM-layout file> -m diam` on a VOC-layout folder scores the
same ground truth, on the same supports and inputs, as the official evaluation (docs/protocol.md §4, §4a, §5).

The official evaluation is re-done here from the facts, without gfss-bench's sampler, preprocessing or scoring:
OpenCV reading, episode remapping at the original resolution, OpenCV resizing and padding, normalisation, the §4a
support walk (`official_episodes`, from the text), features of an independently built official-style PSPNet, the
autograd DIaM reference per query task, bilinear (align_corners=True) upsampling, argmax and per-run confusion.
"""

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image

from gfss_bench.cli import cli
from gfss_bench.methods.diam import DIaM
from tests.data.test_episodes import official_episodes
from tests.methods.diam_reference import reference_diam
from tests.models.official_pspnet_reference import OfficialPSPNet
from tests.models.test_pspnet_checkpoints import _diam_layout, _randomise_batchnorm

SIZE = 97  # (S - 1) % 8 == 0; longer sides become 97, then 96 after flooring to a multiple of 8
MIN_PIXELS = 400  # --min-support-pixels, at the original resolution
ITERATIONS = 12  # past the class-prior update at step 10
FEATURE_TOL = 1e-4  # features of norm ~13; bit-identical here (same float32 ops), a margin for other CPUs
MIOU_TOL = 1e-3  # 0.1 mIoU points, the precision of published tables; measured <= 3e-6 (one flipped pixel)
SHOTS, RUNS, SEED = (1, 2), 2, 2023  # the seed: `run`'s default, the official one
NOVEL, BASE = list(range(1, 6)), list(range(6, 21))  # PASCAL-5i fold 0
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

BIG, SMALL = 0.8, 8  # a blob fills 80% of its quadrant (>= MIN_PIXELS in every image here), or is 8x8 pixels
# stem, (height, width), blobs (class id, size), one blob per quadrant. Class 1 and 2 have 3 support candidates,
# 4 has 2, 3 and 5 only 1 (fewer than 2 shots: repeated); "m45" and "m52" hold two novel classes and are skipped
# (m52's second one is a small blob); "n1" and "n3" hold small novel blobs (queries only); "bg" has no class (no
# query). Landscape, portrait and square, larger and smaller than SIZE.
VAL = [
    ("a1", (131, 175), ((1, BIG), (7, BIG))),
    ("b1", (77, 45), ((2, BIG), (12, SMALL))),
    ("n1", (150, 113), ((9, BIG), (1, SMALL), (15, BIG))),
    ("c1", (61, 83), ((3, BIG),)),
    ("m45", (120, 160), ((4, BIG), (5, BIG))),
    ("a2", (203, 121), ((1, BIG), (15, BIG), (20, BIG))),
    ("d1", (99, 257), ((4, BIG), (11, BIG))),
    ("bg", (90, 90), ()),
    ("e1", (64, 97), ((5, BIG), (8, BIG))),
    ("b2", (111, 145), ((2, BIG),)),
    ("x1", (97, 64), ((6, BIG), (19, BIG), (13, BIG))),
    ("m52", (140, 133), ((5, BIG), (2, SMALL), (17, BIG))),
    ("a3", (50, 70), ((1, BIG), (10, BIG))),
    ("d2", (89, 67), ((4, BIG), (16, BIG), (18, BIG))),
    ("n3", (180, 101), ((14, BIG), (3, SMALL))),
    ("b3", (97, 97), ((2, BIG), (6, BIG))),
    ("x2", (123, 201), ((7, BIG), (12, BIG), (20, BIG), (15, SMALL))),
]
TRAIN = [("t1", (88, 120), ((7, BIG), (1, BIG))), ("t2", (140, 96), ((11, BIG),))]


def write_pascal(root, items, split):
    """A VOC-layout split: JPEGs (smooth random colours, a colour per class), greyscale class-id PNGs with 2-pixel
    255 borders around each blob, and `<split>.txt` with lines `JPEGImages/x.jpg SegmentationClassAug/x.png`
    (`run` reads val only; train.txt is there as in a prepared folder)."""
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClassAug").mkdir(exist_ok=True)
    lines = []
    for number, (stem, (height, width), blobs) in enumerate(items):
        rng = np.random.default_rng(number + 100 * len(split))
        coarse = rng.uniform(0, 255, (5, 7, 3)).astype(np.float32)
        image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        image = image + rng.normal(0, 12, image.shape)
        label = np.zeros((height, width), np.uint8)
        for quadrant, (cls, size) in enumerate(blobs):
            qh, qw = height // 2, width // 2
            bh, bw = (int(qh * size), int(qw * size)) if size == BIG else (size, size)
            top, left = (quadrant // 2) * qh + (qh - bh) // 2, (quadrant % 2) * qw + (qw - bw) // 2
            label[max(top - 2, 0):top + bh + 2, max(left - 2, 0):left + bw + 2] = 255
            label[top:top + bh, left:left + bw] = cls
            image[top:top + bh, left:left + bw] += (37 * cls % 256, 91 * cls % 256, 53 * cls % 256)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg", quality=90)
        Image.fromarray(label).save(root / "SegmentationClassAug" / f"{stem}.png")
        lines.append(f"JPEGImages/{stem}.jpg SegmentationClassAug/{stem}.png")
    (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def official_input(root, image_rel, label_rel, lut):
    """§4a: OpenCV reads, the label remapped by `lut` at the original resolution, the official size arithmetic,
    INTER_LINEAR on float32 / INTER_NEAREST on the float label, top-left padding (0 / 255), /255, (x-mean)/std."""
    image = cv2.cvtColor(cv2.imread(str(root / image_rel), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB).astype(np.float32)
    label = lut[cv2.imread(str(root / label_rel), cv2.IMREAD_GRAYSCALE)]
    height, width = label.shape
    ratio = SIZE / max(height, width)
    new_h, new_w = (SIZE, int(width * ratio)) if height >= width else (int(height * ratio), SIZE)
    new_h, new_w = new_h // 8 * 8, new_w // 8 * 8
    padded = np.zeros((SIZE, SIZE, 3), np.float32)
    padded[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    padded_label = np.full((SIZE, SIZE), 255, np.float32)
    padded_label[:new_h, :new_w] = cv2.resize(label.astype(np.float32), (new_w, new_h),
                                              interpolation=cv2.INTER_NEAREST)
    normalised = (padded / 255 - MEAN) / STD
    return torch.from_numpy(normalised.transpose(2, 0, 1).copy()), torch.from_numpy(padded_label).long()


def lookup(mapping):
    """A uint8 table of 256 entries: `mapping` where given, 0 elsewhere, 255 kept."""
    table = np.zeros(256, np.uint8)
    table[255] = 255
    for old, new in mapping.items():
        table[old] = new
    return table


def calibrated_features(network, images, labels):
    """The network's features (`extract_features`, split after the trunk) once its last BN holds the mean and
    variance of its input over the valid pixels of `images`, as a trained BN would: random BN statistics give
    nearly parallel feature vectors (cosine ~0.98), where DIaM collapses to one class; calibrated, ~0.6."""
    with torch.no_grad():
        trunk = network.layer4(network.layer3(network.layer2(network.layer1(network.layer0(images)))))
        before = network.bottleneck[0](network.ppm(trunk))
        valid = F.interpolate(labels[:, None].float(), size=before.shape[-2:], mode="nearest")[:, 0] != 255
        pixels = before.movedim(1, -1)[valid]
        network.bottleneck[1].running_mean.copy_(pixels.mean(0))
        network.bottleneck[1].running_var.copy_(pixels.var(0))
        return network.bottleneck(network.ppm(trunk))


def confusion(probs, labels, num_classes):
    """§4 scoring: bilinear (align_corners=True) to the label size, argmax, counts over pixels not 255."""
    prediction = F.interpolate(probs, size=labels.shape[-2:], mode="bilinear", align_corners=True).argmax(1)
    keep = labels != 255
    pairs = labels[keep] * num_classes + prediction[keep]
    return np.bincount(pairs.numpy(), minlength=num_classes ** 2).reshape(num_classes, num_classes), prediction


def mean_ious(matrix, num_base):
    """DIaM convention: base mIoU over 1..B, novel over B+1.., classes with union 0 skipped."""
    union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
    iou = np.where(union > 0, np.diag(matrix) / np.maximum(union, 1), np.nan)
    return np.nanmean(iou[1:num_base + 1]), np.nanmean(iou[num_base + 1:])


def official_setup(root, val, seed, checkpoint):
    """The official inputs (docs/protocol.md §4a) and calibrated features of the val images written at `root`, from
    a randomised official-style PSPNet (seeded by `seed`) that is saved at `checkpoint` as DIaM saves it.

    Returns the val list's (image, label) items, the stems, the inputs and features by stem, the classifier
    (weight [C, B+1], bias) and, by stem, whether the label holds any class."""
    torch.manual_seed(seed)
    network = _randomise_batchnorm(OfficialPSPNet(len(BASE) + 1), mean=(-0.2, 0.2), var=(0.5, 2.0),
                                   weight=(0.5, 1.5), bias=(-0.2, 0.2))
    num_base = len(BASE)
    query_lut = lookup({c: 1 + i for i, c in enumerate(BASE)} | {c: 1 + num_base + j for j, c in enumerate(NOVEL)})
    items = [tuple(line.split()) for line in (root / "val.txt").read_text().splitlines()]
    stems = [stem for stem, _, _ in val]
    inputs = {stem: official_input(root, image, label, query_lut) for stem, (image, label) in zip(stems, items)}
    features = dict(zip(stems, calibrated_features(network, torch.stack([inputs[s][0] for s in stems]),
                                                   torch.stack([inputs[s][1] for s in stems]))))
    weight, bias = network.classifier.weight.detach()[:, :, 0, 0].t(), network.classifier.bias.detach()
    torch.save(_diam_layout(network), checkpoint)
    has_class = {stem: bool(((label >= 1) & (label <= 20)).any()) for stem, label in
                 ((s, cv2.imread(str(root / lab), cv2.IMREAD_GRAYSCALE)) for s, (_, lab) in zip(stems, items))}
    return SimpleNamespace(items=items, stems=stems, inputs=inputs, features=features, weight=weight, bias=bias,
                           has_class=has_class)


def test_run_on_a_voc_folder_and_a_diam_checkpoint_scores_as_the_official_evaluation(tmp_path, monkeypatch):
    root = tmp_path / "VOC2012"
    write_pascal(root, VAL, "val")
    write_pascal(root, TRAIN, "train")
    # The official inputs and features, then the network saved as DIaM saves it
    checkpoint = tmp_path / "best.pth"
    setup = official_setup(root, VAL, 5, checkpoint)
    items, stems, inputs, features = setup.items, setup.stems, setup.inputs, setup.features
    weight, bias, has_class = setup.weight, setup.bias, setup.has_class
    num_base, num_classes = len(BASE), 1 + len(BASE) + len(NOVEL)

    seen = {}  # episode seed -> the tasks gfss-bench's DIaM received and the probabilities it returned, by batch
    original_predict = DIaM.predict

    def recording_predict(self, task):
        probs = original_predict(self, task)
        seen.setdefault(task.seed, []).append((task, probs))
        return probs

    monkeypatch.setattr(DIaM, "predict", recording_predict)
    args = ["run", "-b", "pascal5i", "-m", "diam", "-o", f"diam.iterations={ITERATIONS}", "-f", "0", "--runs",
            str(RUNS), "--data-root", str(root), "--checkpoint", str(checkpoint), "--image-size", str(SIZE),
            "--min-support-pixels", str(MIN_PIXELS), "--device", "cpu", "--results-dir", str(tmp_path / "results")]
    for shot in SHOTS:
        args += ["-k", str(shot)]
    ran = CliRunner().invoke(cli, args)
    assert ran.exit_code == 0, ran.output
    stored = (tmp_path / "results").glob("*.json")  # the results, not their per-query sidecars
    records = {r["spec"]["shot"]: r for r in map(json.loads, map(Path.read_text, stored))}
    assert sorted(records) == list(SHOTS)

    # The official evaluation of each run, from the facts, against gfss-bench's result
    for shot in SHOTS:
        expected, stats = official_episodes(root, NOVEL, BASE, 20, shot, RUNS, SEED, MIN_PIXELS)
        if shot == 2:  # the walks skip multi-novel images and repeat, also into a later class's slots
            assert stats["skipped"] > 0 and stats["repeated"] > 0 and stats["foreign"] > 0
        for run, want in zip(records[shot]["runs"], expected):
            assert run["support_images"] == [want[c] for c in NOVEL]
            queries = [s for s in stems if has_class[s] and s not in {p for c in NOVEL for p in want[c]}]
            assert run["num_queries"] == len(queries) == want["num_queries"]

            support_features = torch.stack([torch.stack([features[s] for s in want[c]]) for c in NOVEL])
            owner = {}  # a repeated slot holds an earlier class's image with that class's mask (§4a)
            for c in NOVEL:
                for s in want[c]:
                    owner.setdefault(s, c)
            support_labels = torch.stack([torch.stack([official_input(
                root, *items[stems.index(s)], lookup({owner[s]: 1 + num_base + NOVEL.index(owner[s])}))[1]
                for s in want[c]]) for c in NOVEL])  # practical: only the support's own novel class is annotated
            labels = torch.stack([inputs[s][1] for s in queries])
            task = SimpleNamespace(base_weight=weight, base_bias=bias, num_novel=len(NOVEL),
                                   support_features=support_features, support_labels=support_labels,
                                   query_features=torch.stack([features[s] for s in queries]),
                                   query_valid=labels != 255, query_labels=None)
            reference = reference_diam(task, iterations=ITERATIONS)
            official, official_prediction = confusion(reference, labels, num_classes)

            got = np.array(run["confusion"])
            assert (got.sum(1) == official.sum(1)).all()  # the same ground-truth pixels of every class
            batches = seen[run["seed"]]
            received = SimpleNamespace(**{key: torch.cat([getattr(t, key) for t, _ in batches])
                                          for key in ("query_features", "query_valid")})
            for got_task, _ in batches:  # the same support pixels, exactly, and the same support features
                assert torch.equal(got_task.support_labels, support_labels)
                assert (got_task.support_features - support_features).abs().max() < FEATURE_TOL
            assert torch.equal(received.query_valid, labels != 255)  # void and padding, pixel for pixel
            feature_gap = (received.query_features - task.query_features).abs().max().item()
            assert feature_gap < FEATURE_TOL  # the same inputs through the same network
            probs = torch.cat([p for _, p in batches])
            ours, prediction = confusion(probs, labels, num_classes)
            assert (ours == got).all()  # gfss-bench's probabilities, scored as the official code does
            scored = labels != 255
            agreement = (prediction == official_prediction)[scored].float().mean().item()
            difference = (probs - reference).abs().max().item()
            base_gap, novel_gap = np.abs(np.subtract(mean_ious(got, num_base), mean_ious(official, num_base)))
            assert (run["scores"]["base"], run["scores"]["novel"]) == pytest.approx(mean_ious(got, num_base))
            print("shot {} run {}: features max|diff| {:.2e}, predictions agree on {:.5%} of {} pixels, probabilities "
                  "max|diff| {:.2e}, base / novel mIoU differ by {:.1e} / {:.1e}".format(
                      shot, run["run"], feature_gap, agreement, int(scored.sum()), difference, base_gap, novel_gap))
            predicted = set(official_prediction[scored].tolist())  # not a degenerate network: base and novel
            assert len(predicted) >= 8 and min(predicted) <= num_base < max(predicted)
            assert agreement >= 0.999 and difference < 1e-4
            assert base_gap < MIOU_TOL and novel_gap < MIOU_TOL
