import subprocess
import sys

import pytest


def gfss(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "gfss_bench", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


@pytest.mark.parametrize("args,expected", [
    (["run", "--benchmark", "pascl5i"], "--benchmark: unknown benchmark 'pascl5i' (did you mean 'pascal5i'?)"),
    (["run", "--method", "dim"], "unknown method 'dim' (did you mean 'diam'?)"),
    (["run", "--protocol", "practicle"], "unknown protocol 'practicle' (did you mean 'practical'?)"),
    (["run", "--fold", "9"], "--fold 9 is out of range"),
    (["run", "--shot", "0"], "--shot must be >= 1"),
    (["run", "-o", "bogus=1", "--method", "diam"], "bogus"),
    (["run", "-o", "iterations=abc", "--method", "diam"], "option 'iterations' of method 'diam' must be int, got 'abc'"),
    (["train", "--benchmark", "nope"], "--benchmark: unknown benchmark 'nope'"),
])
def test_bad_input_is_one_line_exit_2(args, expected, tmp_path):
    result = gfss(*args, "--results-dir", str(tmp_path)) if args[0] == "run" else gfss(*args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "choose from" in lines[0] or "must" in lines[0] or "range" in lines[0]


def test_unwritable_cache_is_a_clear_error(tmp_path):
    import os
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = dict(os.environ, GFSS_BENCH_CACHE=str(blocker / "cache"))
    result = gfss("run", "--method", "base", "--fold", "0", "--runs", "1", "--results-dir", str(tmp_path / "r"),
                  env=env)
    assert result.returncode == 2, result.stderr
    assert "cache folder" in result.stderr and "GFSS_BENCH_CACHE" in result.stderr


def test_list_shows_everything():
    result = gfss("list")
    assert result.returncode == 0
    for name in ("diam", "imprint", "finetune", "base", "practical", "standard", "pascal5i", "coco20i",
                 "synthetic10i"):
        assert name in result.stdout
