"""Episodes: the independent sampler, the official `diam` sampler (checked against a re-implementation of facts
§4a on VOC-layout folders), `gfss-bench episodes`, `run --episodes FILE.json`, and the run-id fields."""

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from gfss_bench.data.episodes import EpisodeFile, make_episode, make_episodes, support_candidates
from gfss_bench.evaluation.runner import list_episodes
from gfss_bench.evaluation.spec import RunSpec
from gfss_bench.cli import cli
from gfss_bench.errors import GFSSError
from gfss_bench.methods import METHODS
from gfss_bench.protocols import get_benchmark

BENCH = get_benchmark("pascal5i")
BIG = BENCH.min_support_pixels


def counts(*images):
    """Pixel-count rows from {class: pixels} dicts."""
    table = np.zeros((len(images), 256), dtype=np.int64)
    for row, image in enumerate(images):
        for cls, pixels in image.items():
            table[row, cls] = pixels
    return table


def test_support_filter_follows_facts():
    table = counts({1: BIG}, {1: BIG - 1}, {1: BIG, 2: 10}, {1: BIG, 7: 500}, {2: BIG}, {0: 99})
    candidates = support_candidates(BENCH, 0, table)
    assert list(candidates[0]) == [0, 3]  # too small, and with another novel class, are excluded
    assert list(candidates[1]) == [4]


def table_with_enough_supports():
    images = [{c: BIG, 8: 100} for c in range(1, 6) for _ in range(6)] + [{9: 50}] * 20 + [{0: 10}] * 3
    return counts(*images)


def test_episode_is_a_pure_function_of_its_coordinates():
    table = table_with_enough_supports()
    first = make_episode(BENCH, 0, 5, run=2, seed=2023, pixel_counts=table)
    again = make_episode(BENCH, 0, 5, run=2, seed=2023, pixel_counts=table)
    assert first == again
    other_run = make_episode(BENCH, 0, 5, run=3, seed=2023, pixel_counts=table)
    other_seed = make_episode(BENCH, 0, 5, run=2, seed=7, pixel_counts=table)
    assert first.supports != other_run.supports or first.supports != other_seed.supports


def test_supports_are_removed_from_queries_and_background_only_images_excluded():
    table = table_with_enough_supports()
    episode = make_episode(BENCH, 0, 1, run=0, seed=2023, pixel_counts=table)
    assert len(episode.supports) == 5 and all(len(s) == 1 for s in episode.supports)
    used = {i for s in episode.supports for i in s}
    assert not used & set(episode.queries)
    background_only = set(range(len(table) - 3, len(table)))
    assert not background_only & set(episode.queries)
    assert len(episode.queries) == len(table) - 3 - 5
    for j, group in enumerate(episode.supports):
        assert all(table[i, j + 1] >= BIG for i in group)


def test_too_few_candidates_are_repeated_and_none_is_an_error():
    table = counts({1: BIG}, {1: BIG}, {2: BIG}, {3: BIG}, {4: BIG}, {5: BIG}, {9: 1})
    episode = make_episode(BENCH, 0, 5, run=0, seed=1, pixel_counts=table)
    assert sorted(episode.supports[0]) in ([0, 0, 0, 1, 1], [0, 0, 1, 1, 1])
    assert episode.supports[1] == (2,) * 5
    with pytest.raises(GFSSError, match="novel class 5 .*no support candidate"):
        make_episode(BENCH, 0, 1, run=0, seed=1, pixel_counts=table[[0, 2, 3, 4, 6]])


def test_coco_queries_are_shuffled_and_capped():
    coco = get_benchmark("coco20i")
    images = [{c: 20000} for c in coco.novel_classes(0)] + [{2: 5}] * 30
    table = counts(*images)
    episode = make_episode(coco, 0, 1, run=0, seed=2023, pixel_counts=table)
    assert sorted(episode.queries) == list(range(20, 50))
    assert list(episode.queries) != sorted(episode.queries)


# --- The official sampler (docs/protocol.md §4a) against an independent re-implementation on VOC-layout folders ---------------

SIDE = 20  # labels are SIDE x SIDE
MIN_PIXELS = 60  # the support threshold used with these folders (--min-support-pixels)


def write_voc_folder(root: Path, labels: list[tuple[str, np.ndarray]], duplicate: str | None = None) -> Path:
    """A VOC-layout folder: JPEGImages/<stem>.jpg, SegmentationClassAug/<stem>.png and val.txt listing them in the
    given order (`duplicate`: a stem listed a second time at the end)."""
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClassAug").mkdir()
    lines = []
    for stem, label in labels:
        Image.fromarray(np.full(label.shape + (3,), 90, np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        Image.fromarray(label).save(root / "SegmentationClassAug" / f"{stem}.png")
        lines.append(f"JPEGImages/{stem}.jpg SegmentationClassAug/{stem}.png")
    if duplicate is not None:
        lines.append(f"JPEGImages/{duplicate}.jpg SegmentationClassAug/{duplicate}.png")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    return root


def random_labels(novel, base, seed, plentiful, scarce, multi, count):
    """`count` labels: each novel class of `plentiful` gets 6 large single-novel images, each of `scarce` 1 or 2;
    `multi` images hold two novel classes (both large); the rest hold base classes and small novel blobs (below
    MIN_PIXELS). Images are shuffled, so candidates do not come in class order."""
    rng = np.random.default_rng(seed)

    def label(*blobs):
        out = np.zeros((SIDE, SIDE), np.uint8)
        out[0, :] = 255
        for cls, pixels in blobs:
            free = np.flatnonzero(out.ravel() == 0)
            out.ravel()[rng.choice(free, size=min(pixels, free.size), replace=False)] = cls
        return out

    big = lambda: int(rng.integers(MIN_PIXELS, MIN_PIXELS + 80))  # noqa: E731
    small = lambda: int(rng.integers(1, MIN_PIXELS))  # noqa: E731
    made = []
    for cls in plentiful:
        made += [label((cls, big()), (int(rng.choice(base)), small())) for _ in range(6)]
    for i, cls in enumerate(scarce):
        made += [label((cls, big())) for _ in range(1 + i % 2)]
    for _ in range(multi):
        a, b = rng.choice(novel, size=2, replace=False)
        made.append(label((int(a), big()), (int(b), int(rng.choice([big(), small()])))))
    while len(made) < count:
        made.append(label((int(rng.choice(base)), big()), (int(rng.choice(novel)), small())))
    made.append(np.zeros((SIDE, SIDE), np.uint8))  # background only: no query
    order = rng.permutation(len(made))
    return [(f"img{n:03d}", made[i]) for n, i in enumerate(order)]


def official_episodes(root: Path, novel, base, num_classes, shot, runs, seed, min_pixels):
    """Facts §4a, written from its text: the support sets and query counts of one evaluation, read from the
    folder's list file and label PNGs. Also counts the walks' skips and repeats, to show the fixture exercises
    them."""
    items = [tuple(line.split()) for line in (root / "val.txt").read_text().splitlines() if line.strip()]
    labels = {lab: cv2.imread(str(root / lab), cv2.IMREAD_GRAYSCALE) for _, lab in items}
    candidates = {c: [(img, lab) for img, lab in items if int((labels[lab] == c).sum()) >= min_pixels]
                  for c in novel}
    stream = random.Random(seed)  # random.seed(seed) once; the runs continue the stream
    stats = {"skipped": 0, "repeated": 0, "foreign": 0}
    out = []
    for _ in range(runs):
        chosen_per_class, image_list = {}, []  # image_list: created once per run, before the class loop
        for c in sorted(novel):
            order = list(range(len(candidates[c])))
            stream.shuffle(order)
            chosen = []
            for idx in order:
                if len(chosen) >= shot:
                    break
                img, lab = candidates[c][idx]
                if img in chosen:
                    continue
                if len(set(np.unique(labels[lab]).tolist()) - {0, 255} - set(base)) > 1:
                    stats["skipped"] += 1
                    continue
                chosen.append(img)
            assert chosen, f"no candidate for class {c}"
            image_list += chosen
            if len(chosen) < shot:  # indices below the found count, used on the run's whole list
                stats["repeated"] += 1
                stats["foreign"] += c != min(novel)
                extra = [image_list[i] for i in stream.choices(range(len(chosen)), k=shot - len(chosen))]
                image_list += extra
                chosen = chosen + extra
            chosen_per_class[c] = chosen
        queries = [img for img, lab in items if any(1 <= v <= num_classes for v in np.unique(labels[lab]))]
        for img in dict.fromkeys(p for paths in chosen_per_class.values() for p in paths):
            queries.remove(img)
        out.append({c: [Path(p).stem for p in paths] for c, paths in chosen_per_class.items()} | {
            "num_queries": len(queries)})
    return out, stats


LAYOUTS = [  # benchmark, fold, plentiful novel classes, scarce ones, multi-novel images, images
    ("pascal5i", 0, (1, 2, 4), (3, 5), 12, 60),
    ("pascal10i", 1, (11, 13, 15, 17, 19), (12, 14, 16, 18, 20), 15, 70),
    ("coco20i", 2, (3, 7, 11, 15, 19, 23, 27, 31, 35, 39), (43, 47, 51, 55, 59, 63, 67, 71, 75, 79), 20, 110),
]


@pytest.mark.parametrize("name,fold,plentiful,scarce,multi,count", LAYOUTS)
def test_diam_sampler_matches_an_independent_reading_of_the_facts(tmp_path, name, fold, plentiful, scarce, multi,
                                                                  count):
    bench = get_benchmark(name)
    novel, base = bench.novel_classes(fold), bench.base_classes(fold)
    assert set(plentiful) | set(scarce) == set(novel)
    labels = random_labels(novel, base, seed=len(name) + fold, plentiful=plentiful, scarce=scarce, multi=multi,
                           count=count)
    root = write_voc_folder(tmp_path / name, labels, duplicate=labels[3][0])
    settings = bench.evaluation_settings(min_support_pixels=MIN_PIXELS, max_queries=None)  # every query (COCO too)
    totals = {"skipped": 0, "repeated": 0, "foreign": 0}
    for shot, runs, seed in ((1, 5, 2023), (2, 3, 7), (5, 4, 2023)):
        [document] = list_episodes(bench, [fold], [shot], runs, seed, "diam", settings, root)
        expected, stats = official_episodes(root, novel, base, bench.num_classes, shot, runs, seed, MIN_PIXELS)
        for key in totals:
            totals[key] += stats[key]
        assert [r["run"] for r in document["runs"]] == list(range(runs))
        for run, want in zip(document["runs"], expected):
            assert run["supports"] == {bench.class_names[c - 1]: want[c] for c in novel}
            assert run["num_queries"] == want["num_queries"]
    assert min(totals.values()) > 0  # the walks did skip and repeat, also into a later class's slots


def test_diam_runs_continue_one_stream_and_differ_from_independent():
    table = table_with_enough_supports()
    five = make_episodes(BENCH, 0, 2, 5, 2023, table)
    assert make_episodes(BENCH, 0, 2, 3, 2023, table) == five[:3]  # run r does not depend on later runs
    assert len({e.supports for e in five}) > 1
    assert [e.seed for e in five] == [make_episode(BENCH, 0, 2, r, 2023, table).seed for r in range(5)]
    independent = make_episodes(BENCH, 0, 2, 5, 2023, table, sampler="independent")
    assert independent == [make_episode(BENCH, 0, 2, r, 2023, table) for r in range(5)]
    assert independent != five
    for episode in five:
        used = {i for group in episode.supports for i in group}
        assert not used & set(episode.queries) and len(episode.queries) == len(table) - 3 - len(used)


def test_diam_skips_an_image_listed_twice():
    table = counts({1: BIG}, {1: BIG}, {2: BIG}, {3: BIG}, {4: BIG}, {5: BIG})
    keys = ["a", "a", "b", "c", "d", "e"]  # lines 0 and 1 list the same image
    [episode] = make_episodes(BENCH, 0, 2, 1, 2023, table, image_keys=keys)
    assert episode.supports[0] in ((0, 0), (1, 1))  # found once, then repeated


def test_episodes_json_command(tmp_path):
    bench = get_benchmark("pascal5i")
    labels = random_labels(bench.novel_classes(0), bench.base_classes(0), seed=3, plentiful=(1, 2, 3, 4),
                           scarce=(5,), multi=5, count=40)
    root = write_voc_folder(tmp_path / "voc", labels)
    result = CliRunner().invoke(cli, ["episodes", "-b", "pascal5i", "--data-root", str(root), "-f", "0", "-k", "1",
                                      "-k", "5", "--runs", "3", "--seed", "11", "--min-support-pixels",
                                      str(MIN_PIXELS), "--format", "json"])
    assert result.exit_code == 0, result.output
    documents = json.loads(result.stdout)
    assert [(d["benchmark"], d["fold"], d["shot"], d["seed"], d["episodes"]) for d in documents] == [
        ("pascal5i", 0, 1, 11, "diam"), ("pascal5i", 0, 5, 11, "diam")]
    for document in documents:
        assert set(document) == {"benchmark", "fold", "shot", "seed", "episodes", "runs"}
        expected, _ = official_episodes(root, bench.novel_classes(0), bench.base_classes(0), 20, document["shot"], 3,
                                        11, MIN_PIXELS)
        assert [set(r) for r in document["runs"]] == [{"run", "supports", "num_queries", "distinct_queries"}] * 3
        assert [r["supports"] for r in document["runs"]] == [
            {bench.class_names[c - 1]: want[c] for c in bench.novel_classes(0)} for want in expected]
        assert [r["num_queries"] for r in document["runs"]] == [want["num_queries"] for want in expected]
    table = CliRunner().invoke(cli, ["episodes", "-b", "pascal5i", "--data-root", str(root), "-f", "0", "--runs", "1",
                                     "--min-support-pixels", str(MIN_PIXELS)], terminal_width=200)
    assert table.exit_code == 0 and "airplane" in table.stdout and documents[0]["runs"][0]["supports"]["bottle"][0] \
        in table.stdout
    # the file round-trips, official repeats (another class's image in a short class's slot) included
    path = tmp_path / "episodes.json"
    path.write_text(result.stdout)
    from gfss_bench.data.datasets import open_split

    split = open_split(bench, "val", root)
    settings = bench.evaluation_settings(min_support_pixels=MIN_PIXELS)
    read = EpisodeFile(path).make_episodes(bench, 0, 5, 3, 11, split.class_pixel_counts(), settings, split.names,
                                           split.names)
    assert read == make_episodes(bench, 0, 5, 3, 11, split.class_pixel_counts(), settings, image_keys=split.names)
    assert any(i in read[r].supports[0] for r in range(3) for i in read[r].supports[4])  # class 5 holds class 1's


def gfss(*args):
    return subprocess.run([sys.executable, "-m", "gfss_bench", *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_run_with_an_episode_file_uses_its_supports(tmp_path):
    listed = CliRunner().invoke(cli, ["episodes", "-b", "synthetic5i", "-f", "0", "--runs", "2", "--format", "json"])
    assert listed.exit_code == 0, listed.output
    [document] = json.loads(listed.stdout)
    assert document["runs"][0]["supports"] != document["runs"][1]["supports"]
    for key in ("supports", "num_queries", "distinct_queries"):  # run 0 gets run 1's supports and the other way round
        document["runs"][0][key], document["runs"][1][key] = document["runs"][1][key], document["runs"][0][key]
    stems = [stem for run in document["runs"] for names in run["supports"].values() for stem in names]
    document["runs"][1]["queries"] = listed_queries = [stems[0], stems[1], stems[0]]  # scored as listed, repeats kept
    path = tmp_path / "episodes.json"
    path.write_text(json.dumps([document]))
    results = tmp_path / "results"
    small = ("--image-size", "33", "--device", "cpu")  # fast features; supports do not depend on the image size
    ran = CliRunner().invoke(cli, ["run", "-m", "base", "-b", "synthetic5i", "-f", "0", "--runs", "2", *small,
                                   "--episodes", str(path), "--results-dir", str(results)])
    assert ran.exit_code == 0, ran.output
    [record] = [json.loads(p.read_text()) for p in results.glob("*.json")]
    assert record["spec"]["episodes"] == "file:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    for run, listed_run in zip(record["runs"], document["runs"]):
        assert run["support_images"] == list(listed_run["supports"].values())
    assert record["runs"][0]["num_queries"] == document["runs"][0]["num_queries"]  # both: val minus its supports
    assert (record["runs"][1]["num_queries"], record["runs"][1]["distinct_queries"]) == (3, 2)
    multiset = "\n".join(sorted(listed_queries)).encode()
    assert record["runs"][1]["queries_digest"] == hashlib.sha256(multiset).hexdigest()[:16]
    assert sum(record["runs"][1]["confusion"], []) != sum(record["runs"][0]["confusion"], [])

    def fails(*args, edit=None):
        """The one-line error of `run --episodes` with an edited copy of the file (in-process: the GFSSError)."""
        bad = json.loads(json.dumps([document]))
        if edit:
            edit(bad[0])
        path.write_text(json.dumps(bad))
        result = CliRunner().invoke(cli, ["run", "-m", "base", "-b", "synthetic5i", *small, "--episodes", str(path),
                                          "--results-dir", str(results), *args])
        assert isinstance(result.exception, GFSSError), result.output
        message = str(result.exception)
        assert "\n" not in message and str(path) in message
        return message

    first_class = next(iter(document["runs"][0]["supports"]))
    assert "'no-such-image'" in fails("-f", "0", "--runs", "2",
                                      edit=lambda d: d["runs"][1]["supports"][first_class].__setitem__(0,
                                                                                                       "no-such-image"))
    assert "no entry for synthetic5i fold 1 1-shot" in fails("-f", "1", "--runs", "2")
    assert "no entry for synthetic5i fold 0 5-shot" in fails("-f", "0", "-k", "5", "--runs", "2")
    assert "--runs is 3" in fails("-f", "0", "--runs", "3")
    assert "not of synthetic5i" in fails("-f", "0", "--runs", "2", edit=lambda d: d.update(benchmark="pascal5i"))
    assert "lists query 'nope' (run 1), which is not in the val split" in fails(
        "-f", "0", "--runs", "2", edit=lambda d: d["runs"][1]["queries"].append("nope"))
    assert "unknown class name(s) cat" in fails(
        "-f", "0", "--runs", "2", edit=lambda d: d["runs"][0]["supports"].update(cat=["x"]))
    path.write_text("[{")
    command = gfss("run", "-m", "base", "-b", "synthetic5i", "-f", "0", "--runs", "2", "--episodes", str(path),
                   "--results-dir", str(results))
    lines = [line for line in command.stderr.splitlines() if line.strip()]
    assert command.returncode == 2 and len(lines) == 1 and str(path) in lines[0] and "not valid JSON" in lines[0]


def test_sampler_and_versions_are_part_of_the_run_id(monkeypatch):
    spec = RunSpec.create("base", "synthetic5i", 0, "practical", 1)
    assert (spec.episodes, spec.protocol_version, spec.method_version) == ("diam", 3, 1)
    other = {spec.run_id}
    for changed in (RunSpec.create("base", "synthetic5i", 0, "practical", 1, episodes="independent"),
                    RunSpec.create("base", "synthetic5i", 0, "practical", 1, episodes="file:0123456789abcdef"),
                    RunSpec.create("base", "synthetic5i", 0, "practical", 1, protocol_version=1)):
        assert changed.run_id not in other
        other.add(changed.run_id)
    assert spec.episode_key(0) != RunSpec.create("base", "synthetic5i", 0, "practical", 1,
                                                 episodes="independent").episode_key(0)
    monkeypatch.setattr(METHODS.get("base"), "version", 2)
    bumped = RunSpec.create("base", "synthetic5i", 0, "practical", 1)
    assert bumped.method_version == 2 and bumped.run_id not in other
    with pytest.raises(GFSSError, match="--episodes 'bogus' is unknown"):
        RunSpec.create("base", "synthetic5i", 0, "practical", 1, episodes="bogus")


# --- The official COCO query batches (facts §4a): a replay of one shuffled DataLoader continued across runs ------

def replay_official_dataloader(run_lists, batch, test_num, seed):
    """Facts §4a, from its text: after setup_seed(seed), each run takes test_num / batch batches from one iterator;
    creating an iterator draws the workers' base seed, then the sampler's seed, whose generator gives randperm(n) of
    the list as it is at that moment (the workers' copy); batches are consecutive slices, the last one short."""
    out = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        snapshot, batches = None, iter(())
        for current in run_lists:
            taken = []
            for _ in range(int(test_num / batch)):
                items = next(batches, None)
                if items is None:  # exhausted: a new iterator over this run's list
                    torch.empty((), dtype=torch.int64).random_()
                    sampler = torch.Generator()
                    sampler.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
                    snapshot, order = list(current), torch.randperm(len(current), generator=sampler).tolist()
                    batches = iter([order[i:i + batch] for i in range(0, len(order), batch)])
                    items = next(batches)
                taken += [snapshot[i] for i in items]
            out.append(taken)
    return out


class ListDataset(torch.utils.data.Dataset):
    """The official val dataset's role: a list of query ids that the loop replaces before each run."""

    def __init__(self):
        self.items = []

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def real_dataloader(run_lists, batch, test_num, seed):
    """The same loop on a real torch DataLoader with worker processes, as the official config runs it."""
    dataset, out = ListDataset(), []
    dataset.items = list(run_lists[0])  # the sampler checks the length when the loader is built
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=2,
                                             multiprocessing_context="fork")
        iterator = None
        for current in run_lists:
            dataset.items, taken = list(current), []
            for _ in range(test_num // batch):
                try:
                    items = next(iterator)
                except (StopIteration, TypeError):
                    iterator = iter(loader)
                    items = next(iterator)
                taken += items.tolist()
            out.append(taken)
    return out


def coco_table(extra):
    """Two large single-novel candidates per novel class of COCO-20i fold 0, `extra` base-only queries and 3
    background-only images (no query)."""
    coco = get_benchmark("coco20i")
    return counts(*([{c: 20000} for c in coco.novel_classes(0) for _ in range(2)] + [{2: 5}] * extra
                    + [{0: 7}] * 3))


@pytest.mark.parametrize("extra,test_num", [(80, 150), (75, 150), (75, 100), (61, 120)])
def test_diam_coco_queries_replay_the_official_dataloader(extra, test_num):
    coco, table = get_benchmark("coco20i"), coco_table(extra)  # run lists of 100 (a multiple of 50), 95, 81
    settings = coco.evaluation_settings(max_queries=test_num)
    episodes = make_episodes(coco, 0, 1, 5, 2023, table, settings)
    eligible = [i for i in range(len(table)) if table[i, 1:81].sum() > 0]
    run_lists = [[i for i in eligible if all(i not in g for g in e.supports)] for e in episodes]
    assert len({tuple(r) for r in run_lists}) > 1  # the supports (and so the lists) differ between runs
    expected = replay_official_dataloader(run_lists, 50, test_num, 2023)
    assert [list(e.queries) for e in episodes] == expected
    sizes = [len(q) for q in expected]
    if extra == 75 and test_num == 150:  # short batches count: 50+45+50, then 45+50+45 ...
        assert sizes[:2] == [145, 140] and any(len(set(q)) < len(q) for q in expected)
        own = [set(q) & {i for g in e.supports for i in g} for q, e in zip(expected, episodes)]
        assert any(own)  # a run can hold its own supports (an iterator made during an earlier run)


def test_diam_coco_queries_match_a_real_dataloader_with_workers():
    coco, table = get_benchmark("coco20i"), coco_table(75)
    episodes = make_episodes(coco, 0, 1, 4, 7, table, coco.evaluation_settings(max_queries=150))
    eligible = [i for i in range(len(table)) if table[i, 1:81].sum() > 0]
    run_lists = [[i for i in eligible if all(i not in g for g in e.supports)] for e in episodes]
    assert [list(e.queries) for e in episodes] == real_dataloader(run_lists, 50, 150, 7)


def test_a_query_cap_below_the_batch_is_refused_and_independent_keeps_its_permutation():
    coco, table = get_benchmark("coco20i"), coco_table(30)
    with pytest.raises(GFSSError, match="--queries 12 is below the official validation batch"):
        make_episodes(coco, 0, 1, 2, 2023, table, coco.evaluation_settings(max_queries=12))
    for episode in make_episodes(coco, 0, 1, 2, 2023, table, coco.evaluation_settings(max_queries=12),
                                 sampler="independent"):
        assert len(episode.queries) == 12 and len(set(episode.queries)) == 12


def test_episodes_command_lists_the_official_coco_queries(tmp_path):
    coco = get_benchmark("coco20i")
    novel, base = coco.novel_classes(1), coco.base_classes(1)
    labels = random_labels(novel, base, seed=5, plentiful=novel[:15], scarce=novel[15:], multi=10, count=150)
    root = write_voc_folder(tmp_path / "coco", labels)
    result = CliRunner().invoke(cli, ["episodes", "-b", "coco20i", "--data-root", str(root), "-f", "1", "-k", "5",
                                      "--runs", "3", "--queries", "100", "--min-support-pixels", str(MIN_PIXELS),
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    [document] = json.loads(result.stdout)
    expected, _ = official_episodes(root, novel, base, 80, 5, 3, 2023, MIN_PIXELS)
    eligible = [stem for stem, label in labels if ((label > 0) & (label != 255)).any()]  # in val.txt order
    run_lists = [[s for s in eligible if s not in {x for c in novel for x in want[c]}] for want in expected]
    replay = replay_official_dataloader(run_lists, 50, 100, 2023)
    assert [run["queries"] for run in document["runs"]] == replay
    assert [run["supports"] for run in document["runs"]] == [
        {coco.class_names[c - 1]: want[c] for c in novel} for want in expected]
    assert [(r["num_queries"], r["distinct_queries"]) for r in document["runs"]] == [
        (len(q), len(set(q))) for q in replay]
