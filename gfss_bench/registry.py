"""Small name -> object registries with a decorator, duplicate detection and "did you mean" hints."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from gfss_bench.errors import GFSSError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries; `kind` names what is registered in error messages ("method", ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

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
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown {kind} {name!r}{hint}; choose from: {', '.join(choices)}"
