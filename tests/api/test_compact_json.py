"""The hand-written JSON of the hot paths is byte for byte what ``json.dumps`` writes."""

from __future__ import annotations

import json

import pytest

from enclave.api.models import b64, compact_json
from enclave.kms.context import canonical_context

STRINGS = ["", "key_0123", "é", "\u2028", "\x00\x1f\x7f", "😀", '"\\/', "a b\tc\nd", "\ud800"]


@pytest.mark.parametrize("value", STRINGS, ids=repr)
def test_compact_json_matches_json_dumps(value: str) -> None:
    fields: list[tuple[str, str | int]] = [("key_id", value), ("version", 7),
                                           ("big", -(2**70)), (value or "k", "x")]  # fmt: skip
    assert compact_json(*fields) == json.dumps(dict(fields), separators=(",", ":")).encode()


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff\xfe\xfd", bytes(range(256)) * 9], ids=len)
def test_compact_json_writes_bytes_as_base64(data: bytes) -> None:
    fields: list[tuple[str, str | int | bytes]] = [("key_id", "key_0123"), ("ciphertext", data)]
    expected = {"key_id": "key_0123", "ciphertext": b64(data)}
    assert compact_json(*fields) == json.dumps(expected, separators=(",", ":")).encode()


def test_compact_json_refuses_what_it_would_miswrite() -> None:
    with pytest.raises(TypeError):
        compact_json(("plaintext", True))  # type: ignore[arg-type]  # JSON true, not 1
    with pytest.raises(TypeError):
        compact_json(("version", None))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", STRINGS[1:], ids=repr)
def test_canonical_context_matches_sorted_json_dumps(value: str) -> None:
    context = {"tenant": value, value: "b", "a": value}
    expected = json.dumps(dict(sorted(context.items())), separators=(",", ":")).encode()
    assert canonical_context(context) == expected
