"""Bounded reading of user files (gfss_bench/userfiles.py) and what the CLI makes of the probes of issue 19: alias
bombs, deep nesting, non-UTF-8 text, FIFOs, devices; each a short one-line error within seconds."""

import os
import sys
import time

import pytest

from gfss_bench.errors import GFSSError
from gfss_bench.protocols.benchmark_files import load_benchmark_file
from gfss_bench.userfiles import InputProblem, parse_json, parse_yaml, quote, read_regular


def alias_bomb(levels: int, width: int = 9) -> str:
    """`&l0 [x, ...]`, `&l1 [*l0, ...]`, ...: `width ** levels` values once expanded, in a few hundred bytes."""
    lines = [f"- &l0 [{', '.join(['xxxxxxxx'] * width)}]"]
    lines += [f"- &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_it_is_built():
    started = time.perf_counter()
    with pytest.raises(InputProblem, match="more than 10000 values"):
        parse_yaml("description:\n" + "  " + alias_bomb(9).replace("\n", "\n  "))
    assert time.perf_counter() - started < 2


def test_aliases_within_bounds_work_and_errors_quote_little(tmp_path):
    assert parse_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    path = tmp_path / "bench.yaml"  # 3 levels of 9: 820 values, allowed, then refused by the type check
    path.write_text("name: t\nclasses: [a, b]\nfolds: [[1]]\ndescription:\n  " + alias_bomb(4).replace("\n", "\n  "))
    with pytest.raises(GFSSError) as error:
        load_benchmark_file(path)
    message = str(error.value)
    assert message.startswith(f"benchmark file {path}: 'description' must be a string, got [[")
    assert len(message) < len(str(path)) + 300


@pytest.mark.parametrize("text, reason", [("a: " + "[" * 100000, "nested deeper than 32 levels"),
                                          ("a: " + "[" * 40 + "]" * 40, "nested deeper than 32 levels"),
                                          ("- &r [*r]", "inside its own anchor"),
                                          ("a: 1" + "0" * 5000, "more than 4300 digits"),
                                          ("a: [1, 2", "is not valid YAML")])
def test_bad_yaml(text, reason):
    with pytest.raises(InputProblem, match=reason):
        parse_yaml(text)


def test_json_bounds():
    assert parse_json(b'{"a": [[1]]}') == {"a": [[1]]}
    for data, reason in ((b"[" * 200000, "nested deeper"), (b"[" * 33 + b"]" * 33, "nested deeper"),
                         (b"\xc3\x28", "not UTF-8"), (b"[1" + b"0" * 5000 + b"]", "4300 digits"), (b"{", "JSON")):
        with pytest.raises(InputProblem, match=reason):
            parse_json(data)


def test_read_regular_refuses_fifos_devices_and_big_files(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    (tmp_path / "big").write_bytes(b"x" * 101)
    (tmp_path / "ok").write_bytes(b"x" * 100)
    started = time.perf_counter()
    for name, reason in (("fifo", "a FIFO"), ("zero", "a character device"), ("big", "larger than 100 bytes")):
        with pytest.raises(InputProblem, match=reason):
            read_regular(tmp_path / name, 100)
    assert time.perf_counter() - started < 1  # the FIFO never blocks
    assert read_regular(tmp_path / "ok", 100) == b"x" * 100


def test_quote_is_bounded_and_cheap():
    level = ["x" * 1000] * 9
    for _ in range(9):  # 9 ** 10 strings once expanded: never built
        level = [level] * 9
    for value in (level, "y" * 10 ** 6, 10 ** 4000, {str(i): i for i in range(10 ** 4)}):
        assert len(quote(value)) <= 200
    assert quote("abc") == "'abc'"


def gfss(capsys, monkeypatch, *args) -> tuple[int, str]:
    """(exit code, stderr) of the `gfss-bench` entry point, in this process."""
    from gfss_bench.cli import main

    monkeypatch.setattr(sys, "argv", ["gfss-bench", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def test_cli_probes_are_one_line_errors(tmp_path, capsys, monkeypatch):
    """The probes of the issue through the entry point: exit code 2, one short line naming the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bomb.yaml").write_text("method:\n  " + alias_bomb(9).replace("\n", "\n  "))
    (tmp_path / "deep.yaml").write_text("method: " + "[" * 200000)
    (tmp_path / "latin.yaml").write_bytes(b"method: [diam]\nbenchmark: caf\xe9\n")
    (tmp_path / "long.yaml").write_text("method: [" + "d" * 100000 + "]\n")
    os.mkfifo(tmp_path / "fifo.yaml")
    started = time.perf_counter()
    for name in ("bomb.yaml", "deep.yaml", "latin.yaml", "fifo.yaml", "long.yaml"):
        code, err = gfss(capsys, monkeypatch, "sweep", "--dry-run", name)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (name, err[-2000:])
        assert lines[0].startswith(f"error: sweep config {name}") and len(lines[0]) < 500, lines[0][:1000]
    code, err = gfss(capsys, monkeypatch, "episodes", "-b", "bomb.yaml")  # the same file as a benchmark file
    assert code == 2 and "benchmark file bomb.yaml holds more than 10000 values" in err
    code, err = gfss(capsys, monkeypatch, "report", "-b", "[/bold]x.yaml")  # rich markup in input is text
    assert code == 2 and "[/bold]x.yaml does not exist" in err
    assert time.perf_counter() - started < 20
