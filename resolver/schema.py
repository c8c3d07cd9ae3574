"""The one schema layer: config sections, sink options and detector settings.

Each section is a frozen dataclass whose fields carry their default (written
once) and, in ``Annotated`` metadata, the rule that checks a value. pydantic v2
turns those dataclasses into one validator; this module maps its errors back to
``file:line: key: message`` through the line of every key the YAML loader
recorded (:class:`LocatedDict`).

The convention every rule follows, here and in ``heuristics/settings.py``: a
rule raises ``PydanticCustomError`` with ``ctx["message"]``, the text a user
reads, and optionally ``ctx["key"]``, a key below the value's own location
(an unknown key, a cross-field check).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from typing import Any, ClassVar, NoReturn, TypeVar

from pydantic import BeforeValidator, TypeAdapter, ValidationError, ValidationInfo
from pydantic_core import PydanticCustomError, core_schema


class ConfigError(ValueError):
    """A configuration problem located at ``path:line`` under ``key``."""

    def __init__(self, path: str, line: int, key: str, message: str) -> None:
        self.path, self.line, self.key, self.message = path, line, key, message
        where = f"{path}:{line}" if line else path  # line 0: about the file as a whole
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")


class LocatedDict(dict[str, Any]):
    """A YAML mapping that knows its own line and the line of each key."""

    line: int
    key_lines: dict[str, int]


def fail(message: str, key: str | tuple[str | int, ...] | None = None) -> NoReturn:
    """Reject a value: ``message`` is what the user reads; ``key`` a key (or path of keys) below the value."""
    ctx: dict[str, Any] = {"message": message}
    if key is not None:
        ctx["key"] = key if isinstance(key, tuple) else (key,)
    raise PydanticCustomError("dnsgate", "{message}", ctx)


def under(key: str, check: Callable[[Any], Any], value: Any) -> Any:
    """``check(value)``, its failure reported at ``key`` below the value being read."""
    try:
        return check(value)
    except PydanticCustomError as exc:
        fail(str((exc.context or {})["message"]), key=key)


_KIND_NAMES = {int: "an int", float: "a number", str: "a string", bool: "true or false", list: "a list",
               dict: "a mapping"}
WORD_BOOLEANS = {"yes": True, "on": True, "no": False, "off": False}  # where a key does take true/false


def kind_name(kind: type | tuple[type, ...]) -> str:
    """A type named for a "must be ..." message: an int, a number, a string or a list."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES.get(k, f"a {k.__name__}") for k in kinds)


def of_kind(value: Any, kind: type | tuple[type, ...], *, bools_as: type | None = None) -> Any:
    """``value`` if it is of ``kind`` (an int counts as a number, a bool never does), else a located error.

    ``bools_as`` names the kind a bool is told it should have been (sink options say "a number").
    """
    if kind is bool and isinstance(value, str) and value.lower() in WORD_BOOLEANS:
        return WORD_BOOLEANS[value.lower()]
    if kind in (int, float) and isinstance(value, bool):
        fail(f"must be {kind_name(bools_as or kind)}, not {value!r}")
    if kind is float and isinstance(value, int):
        return float(value)
    if not isinstance(value, kind):
        fail(f"must be {kind_name(kind)}, not {value!r}")
    return value


def Kind(kind: type | tuple[type, ...], *, optional: bool = False) -> BeforeValidator:
    """``Annotated[int, Kind(int)]``: the value must be of ``kind``; with ``optional``, ``None`` means "not set"."""
    return BeforeValidator(lambda v: v if v is None and optional else of_kind(v, kind))


def Rule(check: Callable[[Any], Any]) -> BeforeValidator:
    """``Annotated[T, Rule(fn)]``: ``fn`` returns the value to keep or calls :func:`fail`."""
    return BeforeValidator(check)


def Positive(kind: type, *, bools_as: type | None = None) -> BeforeValidator:
    """A number of ``kind`` greater than 0."""

    def check(value: Any) -> Any:
        value = of_kind(value, kind, bools_as=bools_as)
        if value <= 0:
            fail(f"must be greater than 0, not {value!r}")
        return value

    return BeforeValidator(check)


def one_of(value: Any, choices: Sequence[str], aliases: dict[str, str] | None = None, *, hints: bool = True) -> str:
    """``value`` if it is one of ``choices``; ``aliases`` maps other words users write (``no`` for ``off``)."""
    value = of_kind(value, str)
    value = (aliases or {}).get(value, value)
    if value not in choices:
        hint = difflib.get_close_matches(str(value), choices, n=1) if hints else []
        more = f"; did you mean {hint[0]!r}?" if hint else ""
        fail(f"must be one of {', '.join(choices)}, not {value!r}{more}")
    return str(value)


def Choice(choices: Sequence[str], aliases: dict[str, str] | None = None, *, hints: bool = True) -> BeforeValidator:
    """``Annotated[str, Choice(...)]``: one of ``choices``, as :func:`one_of` reads it."""
    return BeforeValidator(lambda v: one_of(v, choices, aliases, hints=hints))


def ListOf(item: Callable[[Any, ValidationInfo], Any] | None = None) -> BeforeValidator:
    """A YAML list (``None`` is empty); ``item`` checks each element with the validation context."""

    def check(value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return ()
        if not isinstance(value, list):
            fail("must be a list")
        if item is None:
            return value
        out = []
        for i, element in enumerate(value):
            try:
                out.append(item(element, info))
            except PydanticCustomError as exc:
                ctx = dict(exc.context or {})
                ctx["key"] = (i, *ctx.get("key", ()))
                raise PydanticCustomError(exc.type, exc.message_template, ctx) from None
        return tuple(out)

    return BeforeValidator(check)


def unknown_key(name: Any, known: Iterable[str]) -> str:
    """``unknown key``, with the closest known key when one is close: what a typo needs."""
    hint = difflib.get_close_matches(str(name), sorted(known), n=1, cutoff=0.6)
    return f"unknown key; did you mean {hint[0]!r}?" if hint else "unknown key"


class Section:
    """Mixin for a config dataclass read from one YAML mapping.

    ``None`` reads as an empty mapping; a key that is not a field is an error
    with a did-you-mean hint, reported after the known keys' values are checked.
    Fields named in ``NOT_KEYS`` are filled by the loader, never read from YAML.
    """

    __slots__ = ()
    NOT_KEYS: ClassVar[tuple[str, ...]] = ()
    ORDER: ClassVar[tuple[str, ...]] = ()  # keys whose problems are named first, in this order (then the rest)

    @classmethod
    def yaml_keys(cls) -> list[str]:
        """The keys this section accepts."""
        return [f.name for f in fields(cls) if f.name not in cls.NOT_KEYS]  # type: ignore[arg-type]

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Callable[[Any], Any]) -> Any:
        def read(value: Any, inner: Callable[[Any], Any]) -> Any:
            if isinstance(value, cls):  # built by a rule (``on_undeclared: quarantine``)
                return value
            if value is None:
                value = {}
            if not isinstance(value, dict):
                fail("must be a mapping")
            result = inner(value)
            known = cls.yaml_keys()
            for name in value:
                if name not in known:
                    fail(unknown_key(name, known), key=str(name))
            return result

        schema = handler(source)
        # Every other use of the class refers to its definition by ``ref``: the ref moves to
        # the wrapper so that each use reads the mapping the same way.
        return core_schema.no_info_wrap_validator_function(read, schema, ref=schema.pop("ref", None))


T = TypeVar("T")


@functools.cache
def adapter(kind: Any) -> TypeAdapter[Any]:
    """The validator of ``kind``, built once per process."""
    return TypeAdapter(kind)


def line_and_key(data: Any, loc: Sequence[str | int], top_line: int) -> tuple[int, str]:
    """The YAML line of ``loc`` inside ``data`` (the nearest enclosing key's line) and its dotted key."""
    line, key, node = top_line, "", data
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
            if isinstance(node, list) and 0 <= part < len(node):
                node = node[part]
                line = getattr(node, "line", line)
            else:
                node = None
            continue
        key = f"{key}.{part}" if key else str(part)
        if isinstance(node, dict):
            line = getattr(node, "key_lines", {}).get(part, getattr(node, "line", line))
            node = node.get(part)
        else:
            node = None
    return line, key


def located(exc: ValidationError, path: str, data: Any, *, prefix: str = "", line: int = 1,
            fixed_line: bool = False, rank: Callable[[tuple[Any, ...]], Any] | None = None) -> ConfigError:
    """The first of pydantic's errors as a :class:`ConfigError` naming file, line and key."""
    errors = exc.errors(include_url=False)
    if rank is not None:
        errors.sort(key=lambda e: rank(tuple(e["loc"])))
    error = errors[0]
    ctx = error.get("ctx") or {}
    if error["type"] == "missing":
        ctx = {"message": "is required"}
    loc: list[str | int] = [p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    below = ctx.get("key", ())
    loc.extend(below if isinstance(below, tuple | list) else (str(below),))
    where, key = line_and_key(data, loc, line)
    if prefix:
        key = f"{prefix}.{key}" if key else prefix
    return ConfigError(path, line if fixed_line else where, key, str(ctx.get("message", error["msg"])))


def validate(kind: type[T], data: Any, path: str, *, context: dict[str, Any] | None = None, **where: Any) -> T:
    """``data`` as ``kind``, or a :class:`ConfigError` located by :func:`located`."""
    order = getattr(kind, "ORDER", ())
    if order and "rank" not in where:
        where["rank"] = lambda loc: (order.index(loc[0]) if loc and loc[0] in order else len(order) + (not loc))
    try:
        checked: T = adapter(kind).validate_python(data, context=context)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise located(exc, path, data, **where) from None
    return checked
