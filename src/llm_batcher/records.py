"""`Record`: a small value class (equality, hash, repr) without importing `dataclasses`.

The mock LLM starts once per batch and imports the codec and its own modules; `dataclasses`
pulls in inspect, ast, dis and tokenize, and every decorated class costs an exec at import. A
subclass names its fields in ``__slots__``, annotates them for type checkers, and sets them in
a typed ``__init__`` with ``self._set(name=value, ...)``; after that, records are immutable.
"""

from __future__ import annotations


class Record:
    """Equality, hash and repr over the fields named in ``__slots__``."""

    __slots__: tuple[str, ...] = ()

    def _set(self, **fields: object) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{self.__class__.__name__} is immutable")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash((self.__class__, self._values()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{self.__class__.__name__}({fields})"
