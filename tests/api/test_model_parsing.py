"""The parsing shortcuts of ``enclave.api.models`` give what the general paths give."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from enclave.api import schemas
from enclave.api.models import BadInput, Model, parse, parse_json

BODIES = [
    b'{"a":1}', b' {"a":1}', b'{"a":1} ', b'{"a":1}x', b"", b"[NaN]", b'{"a":', b"1",
    b'"x"', b'{"a":1}{}', b'{"a":Infinity}', b"\n\t{}\n", b"{} []", b'{"a":"\\u00e9"}',
    b'{"a":"\\ud83d\\ude00"}', b'{"a":"\\\\ud800"}', b"[" * 32 + b"]" * 32,
]  # fmt: skip


def _reference(body: bytes) -> tuple[str, Any]:
    def reject(name: str) -> object:
        raise ValueError(f"{name} is not JSON")

    try:
        return "ok", json.JSONDecoder(parse_constant=reject).decode(body.decode())
    except ValueError as exc:
        return "error", f"the body is not valid JSON: {exc.args[0][:80]}"


@pytest.mark.parametrize("body", BODIES, ids=repr)
def test_parse_json_matches_json_decoder(body: bytes) -> None:
    try:
        got: tuple[str, Any] = ("ok", parse_json(body))
    except BadInput as exc:
        got = ("error", exc.detail)
    assert got == _reference(body)


MODELS = [m for m in vars(schemas).values() if isinstance(m, type) and issubclass(m, Model)]


@pytest.mark.parametrize("model", [m for m in MODELS if m is not Model], ids=lambda m: m.__name__)
def test_parse_builds_what_the_dataclass_init_builds(model: type[Model]) -> None:
    values = {f.name: _sample(f.type) for f in dataclasses.fields(model)  # type: ignore[arg-type]
              if f.default is dataclasses.MISSING}  # fmt: skip
    document = {k: (v if not isinstance(v, bytes) else "AAEC") for k, v in values.items()}
    parsed = parse(model, document)
    built = model(**{k: (v if not isinstance(v, bytes) else b"\x00\x01\x02")
                     for k, v in values.items()})  # fmt: skip
    assert parsed == built
    assert vars(parsed) == vars(built) and list(vars(parsed)) == list(vars(built))
    if not any(isinstance(v, list | dict) for v in values.values()):  # else unhashable
        assert hash(parsed) == hash(built)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.x = 1  # type: ignore[attr-defined]


def _sample(hint: object) -> object:
    text = str(hint)
    if text.startswith("list[bytes]"):
        return []
    if text.startswith("list"):
        return ["00"]
    if text.startswith("dict"):
        return {}
    return {"str": "x", "int": 1, "bool": True, "bytes": b"", "float": 1.0}.get(
        text.split(" ", maxsplit=1)[0]
    )
