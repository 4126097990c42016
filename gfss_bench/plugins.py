"""Plugins: methods, segmenter families and benchmarks from other packages, found by entry points or `--plugin`.

Installed distributions declare entry points in these groups (pyproject.toml, `[project.entry-points."GROUP"]`):

- `gfss_bench.methods`: `NAME = "package.module:Class"`, a `Method` subclass written like the built-ins (options as
  annotated class attributes, `predict` or `fit`), registered under NAME as `register_method(NAME)` would; or
  `NAME = "package.module"`, a module imported so that its own `register_method` calls run.
- `gfss_bench.segmenters`: `NAME = "package.module:Family"`, a `SegmenterFamily` subclass (or instance)
  registered under NAME (see gfss_bench.models.families); or a module that registers its families itself.
- `gfss_bench.benchmarks`: `NAME = "package.module:BENCHMARK"`, a `Benchmark` whose name is NAME; or a module
  that calls `register_benchmark` itself.

`--plugin MODULE` imports a module (which registers what it defines) without installing anything. Every entry
records where it came from (`Registry.origin`): "built-in", "entry point NAME of DISTRIBUTION VERSION" or
"--plugin MODULE". `load_plugins` is idempotent; the CLI calls it before resolving any name.
"""

from __future__ import annotations

import importlib
import types
from importlib import metadata
from typing import Callable, Iterable

from gfss_bench.errors import GFSSError
from gfss_bench.registry import registering_from

METHOD_GROUP = "gfss_bench.methods"
SEGMENTER_GROUP = "gfss_bench.segmenters"
BENCHMARK_GROUP = "gfss_bench.benchmarks"
GROUPS = (METHOD_GROUP, SEGMENTER_GROUP, BENCHMARK_GROUP)

_loaded: set[tuple[str, str, str]] = set()  # (group, name, value) of the entry points already registered


def _register_method(name: str, value) -> None:
    from gfss_bench.methods import METHODS, Method, register_method

    if not (isinstance(value, type) and issubclass(value, Method)):
        raise TypeError(f"expected a gfss_bench Method subclass or a module, got {value!r}")
    if name in METHODS and METHODS.get(name) is value:  # already decorated with register_method(name)
        return
    if name in METHODS:
        METHODS.add(name, value)  # raises the registry's "already registered" error
    registered_as = value.__dict__.get("name")
    if registered_as in METHODS and METHODS.get(registered_as) is value:
        raise ValueError(f"{value.__qualname__} is already registered as method {registered_as!r}; name the entry "
                         f"point {registered_as!r}, or point it at the module")
    register_method(name)(value)


def _register_family(name: str, value) -> None:
    from gfss_bench.models.families import SEGMENTER_FAMILIES, SegmenterFamily

    if isinstance(value, type) and issubclass(value, SegmenterFamily):
        value = value()
    if not isinstance(value, SegmenterFamily):
        raise TypeError(f"expected a gfss_bench SegmenterFamily subclass or instance, or a module, got {value!r}")
    value.name = name
    SEGMENTER_FAMILIES.add(name, value)


def _register_benchmark(name: str, value) -> None:
    from gfss_bench.protocols import Benchmark, register_benchmark

    if not isinstance(value, Benchmark):
        raise TypeError(f"expected a gfss_bench Benchmark or a module, got {value!r}")
    if value.name != name:
        raise ValueError(f"the entry point is named {name!r} but the benchmark is named {value.name!r}; use one name")
    register_benchmark(value)


_REGISTER: dict[str, Callable[[str, object], None]] = {
    METHOD_GROUP: _register_method, SEGMENTER_GROUP: _register_family, BENCHMARK_GROUP: _register_benchmark}


def entry_point_origin(entry_point: metadata.EntryPoint) -> str:
    """"entry point NAME of DISTRIBUTION VERSION": where the entry point's registrations came from."""
    dist = entry_point.dist
    owner = f"{dist.name} {dist.version}" if dist is not None else "an unknown distribution"
    return f"entry point {entry_point.name} of {owner}"


def load_entry_point(entry_point: metadata.EntryPoint) -> None:
    """Import one entry point and register what it names; any failure is a GFSSError naming the entry point and
    its distribution."""
    key = (entry_point.group, entry_point.name, entry_point.value)
    if key in _loaded:
        return
    origin = entry_point_origin(entry_point)
    try:
        with registering_from(origin):
            value = entry_point.load()
            if not isinstance(value, types.ModuleType):  # a module registered its entries while being imported
                _REGISTER[entry_point.group](entry_point.name, value)
    except Exception as error:  # noqa: BLE001 - a broken plugin may raise anything; report it in one line
        raise GFSSError(f"plugin {origin} ({entry_point.group}: {entry_point.name} = {entry_point.value}) failed to "
                        f"load: {type(error).__name__}: {error}; fix or uninstall that distribution") from None
    _loaded.add(key)


def load_module(module: str) -> None:
    """Import a `--plugin MODULE` (once); what it registers records the origin "--plugin MODULE"."""
    try:
        with registering_from(f"--plugin {module}"):
            importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and (module == error.name or module.startswith(f"{error.name}.")):
            raise GFSSError(f"--plugin {module}: no module named {error.name!r}; install it or add its folder to "
                            "PYTHONPATH") from None
        raise GFSSError(f"--plugin {module}: importing it failed: {error}") from None
    except Exception as error:  # noqa: BLE001 - a broken plugin may raise anything; report it in one line
        raise GFSSError(f"--plugin {module}: importing it failed: {type(error).__name__}: {error} (run python -c "
                        f"'import {module}' for the traceback)") from None


def load_plugins(modules: Iterable[str] = ()) -> None:
    """Register every installed entry point of the three groups, then import each `--plugin` module.

    The built-in registries are filled first, so that their entries are recorded as built-in even when a plugin
    is what imports them.
    """
    import gfss_bench.methods  # noqa: F401  (registers the built-in methods)
    import gfss_bench.models.families  # noqa: F401  (registers the built-in segmenter families)
    import gfss_bench.protocols  # noqa: F401  (registers the built-in benchmarks)

    for group in GROUPS:
        for entry_point in metadata.entry_points(group=group):
            load_entry_point(entry_point)
    for module in modules:
        load_module(module)
