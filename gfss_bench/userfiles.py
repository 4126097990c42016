"""Reading what users hand in within bounds: YAML and JSON files (benchmark files, sweeps, episode files, result
files) and the values quoted back in error messages.

- A file is read only when it is a regular file (a FIFO, a device or a symlink to one is refused without blocking),
  and only up to a size cap.
- YAML is scanned event by event before it is built: nesting deeper than `MAX_DEPTH` levels, more than `MAX_NODES`
  values once aliases are expanded (a "billion laughs" file), and an alias of a node inside itself are refused.
  Anchors and aliases within those bounds work as usual.
- JSON nested deeper than `MAX_DEPTH` levels is refused; Python's 4300-digit limit on integers stays on.
- `quote(value)` is a repr cut to about 200 characters, built without expanding the whole value.

The problems are `InputProblem`s holding the reason only ("is not a regular file (a FIFO)"); callers name the file.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import stat
import sys
from pathlib import Path
from typing import Any

from gfss_bench.errors import GFSSError

MAX_YAML_BYTES = 1 << 20  # benchmark and sweep files are a few KiB
MAX_DEPTH = 32  # nesting levels (lists and mappings); the deepest file gfss-bench writes or reads has 6
MAX_NODES = 10_000  # values of a YAML file, aliases expanded
QUOTE_LIMIT = 200  # characters of user input quoted in an error message

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 8, 8, 8, 8
_REPR.maxstring, _REPR.maxlong, _REPR.maxother = QUOTE_LIMIT, 60, QUOTE_LIMIT


class InputProblem(ValueError):
    """Why a file cannot be used, as a phrase that follows the file's name ("is not valid YAML: ...")."""


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """repr(value), shortened to about `limit` characters (long strings, big numbers and big or deep lists are cut
    with '...'), without building the full repr of a huge value."""
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still quoted
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def key_name(key: Any) -> str:
    """A key of a user's mapping as shown in a message: bare when it is a short plain name, else `quote`d (so a
    newline or a megabyte of text in a key never reaches the message)."""
    if isinstance(key, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,100}", key):
        return key
    return quote(key, 100)


def cut(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` cut to `limit` characters (with '...')."""
    text = str(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a plain file"


def read_regular(path: Path | str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most `max_bytes`. Raises InputProblem for anything else (opened without
    blocking, so a FIFO never hangs), OSError when it cannot be opened or read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputProblem(f"is not a regular file ({_kind(info.st_mode)})")
        if info.st_size > max_bytes:
            raise InputProblem(f"is larger than {_size(max_bytes)} ({_size(info.st_size)})")
        chunks, size = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise InputProblem(f"is larger than {_size(max_bytes)} (it grew while being read)")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _size(count: int) -> str:
    return f"{count / 2 ** 20:.0f} MiB" if count >= 2 ** 20 else f"{count} bytes"


def decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputProblem(f"is not UTF-8 text (byte {error.start} is {data[error.start]:#04x}); save it as UTF-8") \
            from None


def check_yaml_events(text: str, max_depth: int = MAX_DEPTH, max_nodes: int = MAX_NODES) -> None:
    """Refuse YAML whose nesting (aliases followed) exceeds `max_depth`, whose values with aliases expanded exceed
    `max_nodes`, or with an alias of a node inside itself; other syntax errors are left to the loader."""
    import yaml

    anchored: dict[str, tuple[int, int]] = {}  # anchor -> (values, nesting levels) of its node
    stack: list[list] = []  # open lists/mappings: [anchor, values, deepest child nesting]
    total = 0

    def finish(anchor, values: int, depth: int) -> None:
        if anchor is not None:
            anchored[anchor] = (values, depth)
        if stack:
            stack[-1][1] += values
            stack[-1][2] = max(stack[-1][2], depth)

    def count(values: int) -> None:
        nonlocal total
        total += values
        if total > max_nodes:
            raise InputProblem(f"holds more than {max_nodes} values (aliases expanded); write it out shorter")

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                stack.append([event.anchor, 1, 0])
                count(1)
                if len(stack) > max_depth:
                    raise InputProblem(f"is nested deeper than {max_depth} levels")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                anchor, values, depth = stack.pop()
                finish(anchor, values, depth + 1)
            elif isinstance(event, yaml.ScalarEvent):
                count(1)
                finish(event.anchor, 1, 0)
            elif isinstance(event, yaml.AliasEvent):
                if event.anchor not in anchored:
                    raise InputProblem(f"uses the alias *{cut(event.anchor, 60)} inside its own anchor or before "
                                       "the anchor is defined")
                values, depth = anchored[event.anchor]
                count(values)
                if len(stack) + depth > max_depth:
                    raise InputProblem(f"is nested deeper than {max_depth} levels (aliases followed)")
                finish(None, values, depth)
    except yaml.YAMLError:
        return  # the loader reports it, with its position


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load(text)` within the bounds of the module docstring."""
    import yaml

    check_yaml_events(text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputProblem(f"is not valid YAML: {cut(' '.join(str(error).split()), 400)}") from None
    except (ValueError, RecursionError) as error:
        raise InputProblem(_value_problem(error)) from None


def _value_problem(error: Exception, what: str = "cannot be loaded") -> str:
    if "digits" in str(error) and "integer" in str(error):  # Python's limit on integer literals
        return f"holds an integer of more than {sys.get_int_max_str_digits()} digits"
    return f"{what} ({cut(error)})"


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a loaded JSON/YAML value with lists or mappings nested deeper than `max_depth` (no recursion)."""
    todo = [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (list, dict)):
            if depth >= max_depth:
                raise InputProblem(f"is nested deeper than {max_depth} levels")
            todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


def parse_json(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` of UTF-8 bytes (or text), nesting at most `max_depth` levels."""
    text = decode_utf8(data) if isinstance(data, bytes) else data
    try:
        value = json.loads(text)
    except RecursionError:
        raise InputProblem(f"is nested deeper than {max_depth} levels") from None
    except ValueError as error:  # JSONDecodeError, or an integer of more than 4300 digits
        raise InputProblem(_value_problem(error, "is not valid JSON")) from None
    check_depth(value, max_depth)
    return value


def load_yaml_file(path: Path | str, what: str, max_bytes: int = MAX_YAML_BYTES) -> Any:
    """The YAML value of a user's file, or a one-line GFSSError naming `what` ("sweep config") and the file."""
    path = Path(path)
    try:
        return parse_yaml(decode_utf8(read_regular(path, max_bytes)))
    except FileNotFoundError:
        raise GFSSError(f"{what} {path} does not exist") from None
    except OSError as error:
        raise GFSSError(f"cannot read the {what} {path} ({error.strerror or error})") from None
    except InputProblem as problem:
        raise GFSSError(f"{what} {path} {problem}") from None
