"""A small generic name → class registry with did-you-mean lookups."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar, overload

T = TypeVar("T")

__all__ = ["Registry", "UnknownNameError", "did_you_mean"]


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` for the closest choice, or ``""`` when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class UnknownNameError(KeyError, ValueError):
    """A registry lookup failed; the message lists what is registered and a did-you-mean."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to classes. ``register`` works bare (the class's ``name`` attribute, else its lower-cased
    class name) or with an explicit name; registering a name twice is an error.

    Example::

        >>> OBJECTIVES = Registry("objective")
        >>> @OBJECTIVES.register("kl")
        ... class KL: ...
        >>> OBJECTIVES.get("kl").__name__
        'KL'
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    @overload
    def register(self, name_or_obj: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name_or_obj: T) -> T: ...

    def register(self, name_or_obj):  # type: ignore[no-untyped-def]
        if isinstance(name_or_obj, str):
            return lambda obj: self._add(name_or_obj, obj)
        obj = name_or_obj
        return self._add(getattr(obj, "name", None) or obj.__name__.lower(), obj)

    def _add(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(
                f"The {self.kind} name {name!r} is already registered ({self._items[name]!r}); choose another name."
            )
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UnknownNameError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: object) -> str:
        known = sorted(self._items)
        return f"Unknown {self.kind} {name!r}.{did_you_mean(name, known)} Registered {self.kind}s: {', '.join(known)}."

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
