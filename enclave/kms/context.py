"""The encryption context: string pairs bound into a ciphertext as associated data."""

from __future__ import annotations

import json
from collections.abc import Mapping

MAX_CONTEXT_BYTES = 8192
MAX_CONTEXT_PAIRS = 64


# What ``json.dumps`` escapes strings with (``ensure_ascii``, its default).
_json_string = json.encoder.encode_basestring_ascii


class InvalidContext(ValueError):
    type = "invalid-context"


def canonical_context(context: Mapping[str, str] | None) -> bytes:
    """Sorted compact JSON of the pairs; empty bytes for no context."""
    if not context:
        return b""
    if len(context) > MAX_CONTEXT_PAIRS:
        raise InvalidContext(f"at most {MAX_CONTEXT_PAIRS} context pairs")
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise InvalidContext("encryption context keys and values must be non-empty strings")
    # Byte for byte ``json.dumps(dict(sorted(context.items())), separators=(",", ":"))``,
    # written out: every value is a string, and no encoder is built per request.
    # (One pair, the usual context, needs no sort; a list joins faster than a generator.)
    items = context.items() if len(context) == 1 else sorted(context.items())
    pairs = ",".join([f"{_json_string(k)}:{_json_string(v)}" for k, v in items])
    encoded = ("{" + pairs + "}").encode()
    if len(encoded) > MAX_CONTEXT_BYTES:
        raise InvalidContext("encryption context is too large")
    return encoded
