"""`run` and `sweep` against a results folder shared with other processes, damaged by hand or not writable: a spec
stored meanwhile is loaded (never a crash), a damaged result is set aside and recomputed, an unwritable folder fails
before any feature is extracted, and sweep errors name the sweep file. Runs on a 12-image YAML benchmark."""

import json
import os
import shutil

import pytest
from click.testing import CliRunner

from gfss_bench.cli import cli
from gfss_bench.errors import GFSSError
from gfss_bench.evaluation import runner
from gfss_bench.evaluation.runner import execute
from gfss_bench.evaluation.sweep import expand
from gfss_bench.results.store import ResultStore, content_checksum
from tests.evaluation.test_runner import CountingLoader
from tests.evaluation.toy import toy_benchmark, toy_spec


@pytest.fixture
def bench(tmp_path):
    return toy_benchmark(tmp_path / "bench")


def confusions(result):
    return [run["confusion"] for run in result["runs"]]


def stored_meanwhile(monkeypatch, store, sources):
    """Another process stores `sources` (result files) while this one sets up its data: the interleaving of two
    `gfss-bench run` on one results folder, forced at the point where the crash happened."""
    setup = runner._load_evaluation_data
    evaluated = []

    def setup_then_other_process_stores(*args, **kwargs):
        data = setup(*args, **kwargs)
        store.root.mkdir(parents=True, exist_ok=True)
        for source in sources:
            shutil.copyfile(source, store.path_for(source.stem))
        return data

    def evaluate_group(group, *args, **kwargs):
        evaluated.append([spec.method for spec in group])
        return evaluate(group, *args, **kwargs)

    evaluate = runner._evaluate_group
    monkeypatch.setattr(runner, "_load_evaluation_data", setup_then_other_process_stores)
    monkeypatch.setattr(runner, "_evaluate_group", evaluate_group)
    return evaluated


def test_spec_stored_by_another_process_during_setup_is_loaded(bench, tmp_path, monkeypatch):
    spec = toy_spec(bench)
    other = ResultStore(tmp_path / "other")
    execute([spec], other, segmenter_loader=CountingLoader())
    theirs = other.load(other.path_for(spec.run_id))
    store = ResultStore(tmp_path / "shared")
    evaluated = stored_meanwhile(monkeypatch, store, [other.path_for(spec.run_id)])
    messages = []
    [mine] = execute([spec], store, segmenter_loader=CountingLoader(), log=messages.append)
    assert evaluated == []  # the whole group was stored meanwhile: nothing evaluated, no empty group
    assert mine == theirs and any(m.startswith("cached:") for m in messages)
    assert store.load(store.path_for(spec.run_id), spec.run_id) == theirs


def test_part_of_a_group_stored_meanwhile(bench, tmp_path, monkeypatch):
    imprint, base = toy_spec(bench, "imprint"), toy_spec(bench, "base")
    other = ResultStore(tmp_path / "other")
    execute([imprint], other, segmenter_loader=CountingLoader())
    theirs = other.load(other.path_for(imprint.run_id))
    store = ResultStore(tmp_path / "shared")
    evaluated = stored_meanwhile(monkeypatch, store, [other.path_for(imprint.run_id)])
    results = execute([imprint, base], store, segmenter_loader=CountingLoader())
    assert evaluated == [["base"]]  # only what was not stored meanwhile
    assert results[0] == theirs and results[1]["run_id"] == base.run_id
    assert store.state(base.run_id) == "stored"


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _drop_spec(path):  # a valid checksum over a result without its spec
    result = json.loads(path.read_text())
    del result["spec"], result["checksum"]
    result["checksum"] = content_checksum(result)
    path.write_text(json.dumps(result))


def _nest(path):
    path.write_text("[" * 200000)


def _fifo(path):
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("damage, reason", [(_truncate, "cannot be read as JSON"), (_drop_spec, "'spec'"),
                                            (_nest, "nested deeper"), (_fifo, "not a regular file")])
def test_damaged_stored_result_is_set_aside_and_recomputed(bench, tmp_path, damage, reason):
    spec = toy_spec(bench)
    store = ResultStore(tmp_path / "results")
    [first] = execute([spec], store, segmenter_loader=CountingLoader())
    path = store.path_for(spec.run_id)
    damage(path)
    damaged_kind = path.stat().st_mode
    assert store.state(spec.run_id) == "damaged"
    messages, loader = [], CountingLoader()
    [again] = execute([spec], store, segmenter_loader=loader, log=messages.append)
    assert loader.calls == 1 and confusions(again) == confusions(first)  # recomputed, same numbers
    warning = next(m for m in messages if m.startswith("warning"))
    assert str(path) in warning and reason in warning and "computing" in warning and "\n" not in warning
    [aside] = tmp_path.joinpath("results").glob(f"{spec.run_id}.json.damaged-*")
    assert aside.name in warning and aside.lstat().st_mode == damaged_kind  # kept, renamed, not deleted
    assert store.state(spec.run_id) == "stored"
    results, problems = store.load_all()  # the damaged copy is not a *.json any more: reports do not list it
    assert [r["run_id"] for r in results] == [spec.run_id] and problems == []


def test_unwritable_results_folder_fails_before_any_work(bench, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    loader = CountingLoader()
    with pytest.raises(GFSSError, match=r"results folder .*a-file/results cannot be written.*--results-dir"):
        execute([toy_spec(bench)], ResultStore(blocker / "results"), segmenter_loader=loader)
    assert loader.calls == 0  # no segmenter built, no feature extracted
    if os.geteuid() != 0:  # root writes into read-only folders
        readonly = tmp_path / "readonly"
        readonly.mkdir(mode=0o555)
        with pytest.raises(GFSSError, match="cannot be written"):
            execute([toy_spec(bench)], ResultStore(readonly), segmenter_loader=loader)
        assert loader.calls == 0


def test_stored_results_need_no_writable_folder(bench, tmp_path, monkeypatch):
    spec = toy_spec(bench)
    store = ResultStore(tmp_path / "results")
    execute([spec], store, segmenter_loader=CountingLoader())
    monkeypatch.setattr(ResultStore, "check_writable", lambda self: pytest.fail("nothing to write"))
    loader = CountingLoader()
    assert execute([spec], store, segmenter_loader=loader) == [store.load(store.path_for(spec.run_id))]
    assert loader.calls == 0


def _sweep_file(tmp_path, bench_file, **extra):
    settings = {"benchmark": f"[{bench_file}]", "method": "[imprint]", "fold": "[0]", "runs": "1",
                "results_dir": str(tmp_path / "results"), **extra}
    path = tmp_path / "sweep.yaml"
    path.write_text("".join(f"{key}: {value}\n" for key, value in settings.items()))
    return path


def test_sweep_dry_run_says_damaged(bench, tmp_path):
    import yaml

    path = _sweep_file(tmp_path, tmp_path / "bench" / f"{bench}.yaml")
    [spec] = expand(yaml.safe_load(path.read_text()))
    store = ResultStore(tmp_path / "results")
    store.root.mkdir()
    states = {}
    for state, content in (("missing", None), ("damaged", "{\"truncated"), ("damaged", "[" * 100000)):
        if content is not None:
            store.path_for(spec.run_id).write_text(content)
        result = CliRunner().invoke(cli, ["sweep", "--dry-run", str(path)])
        assert result.exit_code == 0, result.output
        states.setdefault(state, []).append(result.output.split()[1])
    assert states == {"missing": ["missing"], "damaged": ["damaged", "damaged"]}


@pytest.mark.parametrize("extra, message", [({"method": "[nosuch]"}, "unknown method 'nosuch'"),
                                            ({"shot": "[0]"}, "--shot must be >= 1"),
                                            ({"fold": "[7]"}, "--fold 7 is out of range")])
def test_sweep_errors_name_the_sweep_file(bench, tmp_path, extra, message):
    path = _sweep_file(tmp_path, tmp_path / "bench" / f"{bench}.yaml", **extra)
    for args in (["sweep", str(path)], ["sweep", "--dry-run", str(path)]):
        result = CliRunner().invoke(cli, args)
        assert isinstance(result.exception, GFSSError), result.output
        assert str(result.exception).startswith(f"sweep config {path}: ") and message in str(result.exception)


@pytest.mark.slow  # about 10 s on a loaded 2-core CPU (three BCM evaluations); the draws' replay is in test_bcm.py
def test_bcm_resumed_at_a_later_run_draws_as_an_uninterrupted_evaluation(bench, tmp_path, monkeypatch):
    """BCM's numpy stream continues across runs (docs/protocol.md §8 item 9): the run checkpoint carries it."""
    spec = toy_spec(bench, "bcm", runs=2, options={"c_grid_size": 2})
    [reference] = execute([spec], ResultStore(tmp_path / "whole"), segmenter_loader=CountingLoader())
    store, save = ResultStore(tmp_path / "killed"), ResultStore.save_partial

    def save_then_die(self, *args, **kwargs):
        save(self, *args, **kwargs)
        raise KeyboardInterrupt  # killed right after run 0's checkpoint

    monkeypatch.setattr(ResultStore, "save_partial", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        execute([spec], store, segmenter_loader=CountingLoader())
    monkeypatch.setattr(ResultStore, "save_partial", save)
    stream = store.load_partial(spec.run_id)["method_stream"]
    assert stream is not None and len(stream["keys"]) == 624
    [resumed] = execute([spec], store, segmenter_loader=CountingLoader())
    assert resumed["provenance"]["resumed_runs"] == 1 and confusions(resumed) == confusions(reference)
    lost = ResultStore(tmp_path / "lost")  # not vacuous: resuming run 1 on a fresh stream scores differently
    lost.save_partial(spec.run_id, spec.to_dict(), reference["runs"][:1], {"skipped_images": [], "method_stream": None})
    [fresh] = execute([spec], lost, segmenter_loader=CountingLoader())
    assert fresh["provenance"]["resumed_runs"] == 1 and confusions(fresh)[1:] != confusions(reference)[1:]
