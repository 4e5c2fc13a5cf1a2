"""Strict input models of the KMS HTTP API: JSON bodies and query strings into frozen values.

A model is a frozen dataclass whose fields are typed with the few shapes the API uses
(``str``, ``int``, ``bool``, ``float``, ``bytes`` (standard base64 on the wire), a
``dict[str, str]`` context, ``list[str]``, ``list[bytes]``, a JSON object, each optionally
``| None``). ``parse(Model, document)`` accepts exactly the declared fields: an unknown
field, a missing required field, a wrong JSON type (``true`` for a number, ``1`` for a
boolean, a number for a string), bad base64 or a value beyond a field's size are each a
``BadInput`` naming the field. An object that exists is valid in form; the service checks
meaning (key ids, levels, contexts) and audits.

Must never: coerce a value into another type, accept a field it does not declare, or put
a submitted value (which may be a plaintext) into an error message.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar, Union

T = TypeVar("T")

MAX_STRING_CHARS = 64 * 1024
MAX_LIST_ITEMS = 64
# Request bodies are flat (a release policy, the deepest, nests 3 levels); a deeper body is
# refused before a model sees it, and every decoder limit answers the same.
MAX_JSON_DEPTH = 32


class BadInput(Exception):
    """The request is malformed (400) or too large (413). ``slug`` is the problem type."""

    def __init__(self, detail: str, *, slug: str = "invalid-request", status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.slug = slug
        self.status = status


def decode_b64(value: object, name: str, *, limit: int | None = None) -> bytes:
    """Standard base64 (padding required, no whitespace, no URL-safe alphabet)."""
    if not isinstance(value, str):
        raise BadInput(f"{name} must be a base64 string", slug="wrong-type")
    try:
        # ``base64.b64decode(..., validate=True)`` is this call behind two Python frames.
        raw = binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise BadInput(f"{name} is not valid base64", slug="invalid-base64") from None
    if limit is not None and len(raw) > limit:
        raise BadInput(f"{name} is larger than {limit} bytes", slug="too-large", status=413)
    return raw


def b64(data: bytes) -> str:
    # ``base64.b64encode(data)`` is this call behind a Python frame.
    return binascii.b2a_base64(data, newline=False).decode("ascii")


_json_string = json.encoder.encode_basestring_ascii  # what json.dumps uses (ensure_ascii)


def compact_json(*fields: tuple[str, str | int | bytes]) -> bytes:
    """A flat JSON object of string and integer fields (distinct names, in the given
    order), byte for byte what ``json.dumps(dict(fields), separators=(",", ":"))`` gives
    (the same C string escaper, ``ensure_ascii``), without building an encoder per answer:
    the crypto answers are on every request's hot path.

    A ``bytes`` value is written as its standard base64 string, as ``b64`` gives it. The
    base64 alphabet needs no JSON escaping, so the encoder's bytes go out as they are: the
    escaper would scan every character of a ciphertext (kilobytes) to change none."""
    parts = []
    for name, value in fields:
        if isinstance(value, bytes):
            encoded = binascii.b2a_base64(value, newline=False)
            parts.append(f'{_json_string(name)}:"'.encode("ascii") + encoded + b'"')
        elif isinstance(value, str):
            parts.append(f"{_json_string(name)}:{_json_string(value)}".encode("ascii"))
        elif type(value) is int:
            parts.append(f"{_json_string(name)}:{int.__repr__(value)}".encode("ascii"))
        else:  # bool is an int to Python, not to JSON: refused rather than miswritten
            raise TypeError(f"compact_json takes str, int and bytes, not {type(value)!r}")
    return b"{" + b",".join(parts) + b"}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


# A field's converter: (JSON value, field name) -> the model's value, or ``BadInput``. The
# name is an argument because list items are named by their index ("certs[2]").
Converter = Callable[[Any, str], Any]


def _compile(hint: Any, limits: Mapping[str, int]) -> Converter:
    """The converter of one type hint, resolved once per model field: parsing a body then
    costs one closure call per field, not a walk over ``typing`` introspection."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        arguments = typing.get_args(hint)
        options = [a for a in arguments if a is not type(None)]
        nullable = len(options) != len(arguments)
        inner = _compile(options[0], limits)

        def union(value: Any, name: str) -> Any:
            if value is None:
                if nullable:
                    return None
                raise BadInput(f"{name} must not be null", slug="wrong-type")
            return inner(value, name)

        return union
    if hint is bool:
        return _to_bool
    if hint is int:
        return _to_int
    if hint is float:
        return _to_float
    if hint is str:

        def to_str(value: Any, name: str) -> Any:
            if not isinstance(value, str):
                raise BadInput(f"{name} must be a string, not {_json_type(value)}",
                               slug="wrong-type")  # fmt: skip
            if len(value) > limits.get(name, MAX_STRING_CHARS):
                raise BadInput(f"{name} is too long", slug="too-large", status=413)
            return value

        return to_str
    if hint is bytes:

        def to_bytes(value: Any, name: str) -> Any:
            return decode_b64(value, name, limit=limits.get(name))

        return to_bytes
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        strings = key_hint is str and value_hint is str

        def to_dict(value: Any, name: str) -> Any:
            if not isinstance(value, dict):
                raise BadInput(f"{name} must be an object, not {_json_type(value)}",
                               slug="wrong-type")  # fmt: skip
            if strings:
                for item in value.values():
                    if not isinstance(item, str):
                        raise BadInput(f"{name} values must be strings", slug="wrong-type")
            return dict(value)

        return to_dict
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        item = _compile(item_hint, limits)

        def to_list(value: Any, name: str) -> Any:
            if not isinstance(value, list):
                raise BadInput(f"{name} must be an array, not {_json_type(value)}",
                               slug="wrong-type")  # fmt: skip
            if len(value) > limits.get(name + "[]", MAX_LIST_ITEMS):
                raise BadInput(f"{name} has too many items", slug="too-large", status=413)
            return [item(v, f"{name}[{i}]") for i, v in enumerate(value)]

        return to_list

    def unsupported(value: Any, name: str) -> Any:
        raise TypeError(f"unsupported field type {hint!r} for {name}")  # a programming error

    return unsupported


def _to_bool(value: Any, name: str) -> Any:
    if not isinstance(value, bool):
        raise BadInput(f"{name} must be a boolean, not {_json_type(value)}", slug="wrong-type")
    return value


def _to_int(value: Any, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{name} must be an integer, not {_json_type(value)}", slug="wrong-type")
    return value


def _to_float(value: Any, name: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadInput(f"{name} must be a number, not {_json_type(value)}", slug="wrong-type")
    return float(value)


class Model:
    """Base of the input models (a marker plus per-model limits)."""

    # Field name -> byte limit (bytes fields) or character limit (str fields);
    # "<field>[]" -> item limit of a list field.
    LIMITS: ClassVar[Mapping[str, int]] = {}


M = TypeVar("M", bound=Model)


@dataclasses.dataclass(frozen=True)
class _Parser:
    """A model's fields, each with whether it is required and its converter; ``defaults``
    holds the plain default of each optional field when ``plain`` (see ``_is_plain``)."""

    names: frozenset[str]
    fields: tuple[tuple[str, bool, Converter], ...]
    plain: bool
    defaults: Mapping[str, Any]


@functools.cache
def _parser(model: type[Model]) -> _Parser:
    """A model's parser, built once per model (parsing is on every request's hot path)."""
    hints = typing.get_type_hints(model)
    specs = dataclasses.fields(model)  # type: ignore[arg-type]
    fields = tuple(
        (
            spec.name,
            spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING,
            _compile(hints[spec.name], model.LIMITS),
        )
        for spec in specs
    )
    plain = _is_plain(model, specs)
    defaults = {s.name: s.default for s in specs if s.default is not dataclasses.MISSING}
    return _Parser(frozenset(name for name, _, _ in fields), fields, plain, defaults)


def _is_plain(model: type[Model], specs: tuple[dataclasses.Field[Any], ...]) -> bool:
    """Whether the dataclass ``__init__`` of ``model`` only stores its arguments and plain
    defaults (no ``__post_init__``, no default factories, no slots, every field in
    ``__init__``): then ``_build`` makes the same instance without it."""
    return (
        not hasattr(model, "__post_init__")
        and not hasattr(model, "__slots__")
        and all(s.init and s.default_factory is dataclasses.MISSING for s in specs)
    )


def parse(model: type[M], document: object) -> M:
    """``model`` from a decoded JSON object, strictly (see the module docstring)."""
    if not isinstance(document, dict):
        raise BadInput(f"the body must be a JSON object, not {_json_type(document)}")
    parser = _parser(model)  # type: ignore[arg-type]  # classes are hashable
    if not parser.names.issuperset(document):
        unknown = sorted(set(document) - parser.names)
        names = ", ".join(repr(u)[:64] for u in unknown[:5])
        raise BadInput(f"unknown field(s): {names}", slug="unknown-field")
    values: dict[str, Any] = {}
    for name, required, convert in parser.fields:
        if name not in document:
            if required:
                raise BadInput(f"{name} is required", slug="missing-field")
            continue
        values[name] = convert(document[name], name)
    if parser.plain:
        return _build(model, parser, values)
    return model(**values)


def _build(model: type[M], parser: _Parser, values: dict[str, Any]) -> M:
    """``model(**values)`` for a plain model: the frozen dataclass ``__init__`` stores each
    field with ``object.__setattr__``, a slow call per field on every request; this stores
    the same values (the given ones, else the defaults) in the instance's dict at once."""
    instance = object.__new__(model)
    state = instance.__dict__
    for name, _, _ in parser.fields:
        state[name] = values[name] if name in values else parser.defaults[name]
    return instance


def parse_json(body: bytes) -> object:
    """Decode a request body as JSON (UTF-8, no NaN/Infinity, at most ``MAX_JSON_DEPTH``
    levels of arrays and objects); ``BadInput`` otherwise."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput("the body is not UTF-8", slug="malformed-json") from None
    if text.startswith("\ufeff"):  # as json.loads refuses it
        raise BadInput("the body is not valid JSON: Unexpected UTF-8 BOM", slug="malformed-json")
    try:
        document = _decode(text)
    except RecursionError:  # the C scanner's own limit, far beyond MAX_JSON_DEPTH
        raise _too_deep() from None
    except ValueError as exc:
        raise BadInput(
            f"the body is not valid JSON: {exc.args[0][:80]}", slug="malformed-json"
        ) from None
    # Only a body with more brackets than the limit can nest deeper than it.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(
        document, MAX_JSON_DEPTH
    ):
        raise _too_deep()
    # A string is Unicode only if no \uD800-\uDFFF escape is left unpaired: the
    # decoder keeps such a lone surrogate, which no UTF-8 writer (the store, the audit
    # log) can encode. Raw UTF-8 cannot carry one: only a body with an escape can.
    if "\\u" in text and _has_lone_surrogate(document):
        raise BadInput("the body has a string that is not Unicode (a lone surrogate)",
                       slug="malformed-json")  # fmt: skip
    return document


def _has_lone_surrogate(document: object) -> bool:
    """Whether a string of ``document`` (a key or a value, at any depth) does not encode
    as UTF-8."""
    pending = [document]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if not value.isascii():
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def _too_deep() -> BadInput:
    return BadInput(
        f"the body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels",
        slug="malformed-json",
    )


def _deeper_than(document: object, limit: int) -> bool:
    """Whether ``document`` has arrays and objects nested more than ``limit`` deep (walked
    without recursion: the document may be as deep as the decoder allows)."""
    pending: list[tuple[object, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            items: Iterable[object] = value.values()
        elif isinstance(value, list):
            items = value
        else:
            continue
        if depth > limit:
            return True
        pending.extend((item, depth + 1) for item in items)
    return False


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


# One decoder for every body (json.loads with an option builds a new one per call).
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
# The decoder's C scanner (what ``raw_decode`` calls): (text, index) -> (value, end).
_SCAN: Callable[[str, int], tuple[object, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _decode(text: str) -> object:
    """``_DECODER.decode(text)``. A body that is one JSON value from its first to its last
    character (what clients send) is scanned directly, without ``decode``'s two
    whitespace regexes and two Python frames; anything else (surrounding whitespace,
    trailing data, an error) takes ``decode`` itself, so its value or error is the same."""
    try:
        document, end = _SCAN(text, 0)
    except (StopIteration, ValueError):
        return _DECODER.decode(text)
    if end != len(text):
        return _DECODER.decode(text)
    return document


def parse_query_int(
    query: Mapping[str, str], name: str, default: int, *, low: int, high: int
) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise BadInput(f"{name} must be a non-negative integer", slug="wrong-type")
    value = int(text)
    if not low <= value <= high:
        raise BadInput(f"{name} must be {low}..{high}")
    return value


def parse_query_float(
    query: Mapping[str, str], name: str, default: float, *, low: float, high: float
) -> float:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = float(text) if len(text) <= 16 else float("nan")
    except ValueError:
        raise BadInput(f"{name} must be a number of seconds", slug="wrong-type") from None
    if not low <= value <= high:  # also refuses NaN
        raise BadInput(f"{name} must be {low:g}..{high:g} seconds")
    return value


@typing.dataclass_transform(frozen_default=True, kw_only_default=True)
def model(cls: type[T]) -> type[T]:
    """Declare a frozen, keyword-only input model."""
    return dataclasses.dataclass(frozen=True, kw_only=True)(cls)
