"""Small name -> object registries with a decorator, duplicate detection and "did you mean" hints.

Every entry records where it came from ("built-in", or the plugin that added it; see gfss_bench.plugins), so that
`gfss-bench list` can show it and a duplicate name says which entry it collides with.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from typing import Callable, Generic, Iterator, TypeVar

from gfss_bench.errors import GFSSError
from gfss_bench.userfiles import quote

T = TypeVar("T")
BUILT_IN = "built-in"
_ORIGIN = contextvars.ContextVar("registry_origin", default=BUILT_IN)


@contextlib.contextmanager
def registering_from(origin: str):
    """Entries added inside this block (in any registry) record `origin` as where they came from."""
    token = _ORIGIN.set(origin)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


class Registry(Generic[T]):
    """A dict of named entries; `kind` names what is registered in error messages ("method", ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._origins: dict[str, str] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered ({self._origins[name]})")
        self._entries[name] = obj
        self._origins[name] = _ORIGIN.get()

    def replace(self, name: str, obj: T) -> None:
        """Put `obj` under `name`, replacing an earlier entry (a definition file that was re-read after an edit)."""
        self._entries[name] = obj
        self._origins[name] = _ORIGIN.get()

    def origin(self, name: str) -> str:
        """Where the entry came from: "built-in", or the entry point or --plugin module that added it."""
        self.get(name)
        return self._origins[name]

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise GFSSError(unknown_choice_message(self.kind, name, self.names()))
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]


def unknown_choice_message(kind: str, name: str, choices: list[str]) -> str:
    """"unknown method 'dim' (did you mean 'diam'?); choose from: base, diam, ..." """
    close = difflib.get_close_matches(str(name)[:200], choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {quote(name)}{hint}; choose from: {', '.join(choices)}"
