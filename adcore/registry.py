"""Name -> object tables for methods, augmentations and scorers, and typed parameter specs.

A dropdown in a page is a lookup in one of these tables; adding an entry touches no page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A table of named entries with a clear error for unknown or duplicate names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


@dataclass(frozen=True)
class Param:
    """One user-settable parameter: type, default, allowed range or choices, and a one-line help."""

    name: str
    type: type  # int, float, bool or str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    log: bool = False  # a slider on a log scale (learning rates)

    def parse(self, text: str) -> Any:
        """Turn command-line text (``key=value``) into a value of this parameter's type."""
        if self.type is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{self.name}: expected true/false, got {text!r}")
        try:
            return self.type(text)
        except ValueError:
            raise ValueError(f"{self.name}: expected {self.type.__name__}, got {text!r}") from None

    def validate(self, value: Any) -> Any:
        """Return ``value`` coerced to this parameter's type, or raise ValueError saying why."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(
                f"{self.name}: expected {self.type.__name__}, got {type(value).__name__} {value!r}"
            )
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name}: {value!r} is not one of {list(self.choices)}")
        if self.low is not None and value < self.low:
            raise ValueError(f"{self.name}: {value!r} is below the minimum {self.low}")
        if self.high is not None and value > self.high:
            raise ValueError(f"{self.name}: {value!r} is above the maximum {self.high}")
        return value

    def describe(self) -> str:
        if self.choices is not None:
            allowed = "|".join(map(str, self.choices))
        elif self.low is not None or self.high is not None:
            allowed = f"{self.low if self.low is not None else ''}..{self.high if self.high is not None else ''}"
        else:
            allowed = self.type.__name__
        return f"{self.name}={self.default!r} ({allowed}): {self.help}"


def validate_params(specs: list[Param], values: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, every value checked; unknown names raise ValueError listing the known ones."""
    by_name = {p.name: p for p in specs}
    unknown = sorted(set(values) - set(by_name))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; known: {sorted(by_name)}")
    out = {}
    for spec in specs:
        out[spec.name] = spec.validate(values[spec.name]) if spec.name in values else spec.default
    return out


@dataclass(frozen=True)
class Entry:
    """What a registry holds for an augmentation or a scorer: the callable, its params and help."""

    name: str
    fn: Any
    params: list[Param] = field(default_factory=list)
    help: str = ""
