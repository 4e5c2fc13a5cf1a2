"""The simulated measurement of this tree: SHA-384 over the enclave's code and launch config.

This module owns the definition of the simulated launch measurement, the value a simulated
SNP report carries in MEASUREMENT, a simulated TDX quote in MRTD and a simulated Nitro
document in PCR0. It is what a real platform's launch digest is to a real image: a change
to one byte of enclave code, of the verifier library the enclave runs, of a trust root it
ships, or of its launch configuration gives a different measurement, so a key sealed to the
old measurement cannot be unsealed by the new code.

What is measured (and nothing else):

* every ``*.py`` file under ``enclave/`` and ``verifier/`` (the enclave runs the verifier
  library too), and
* the trust roots shipped as verifier package data (``verifier/roots/*.pem``, ``*.der``:
  the same globs as ``[tool.setuptools.package-data]``), because swapping a root changes
  what the enclave trusts.

Files are taken in the order of their POSIX relative paths (sorted as strings), so the value
does not depend on the file system. The encoding is domain-separated and unambiguous::

    SHA-384( "kms-sim-measurement/v1" 0x00
             u64be(file count)
             for each file: path (UTF-8) 0x00 u64be(len(content)) content
             u64be(len(launch config)) launch config )

The launch configuration is canonical JSON (sorted keys, no whitespace, UTF-8).

This module must never guess: a missing tree, a symbolic link, an over-size file or a
non-canonicalisable configuration is an error (``MeasurementError``), never a skipped input.
It does no network I/O and reads only the trees it is pointed at.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Any

MEASUREMENT_DOMAIN = b"kms-sim-measurement/v1\x00"
CODE_DIGEST_DOMAIN = b"kms-sim-code-digest/v1\x00"
MEASUREMENT_BYTES = 48  # SHA-384, the size of SNP MEASUREMENT, TDX MRTD and Nitro PCR0


class MeasurementError(Exception):
    """The tree or the launch configuration cannot be measured as asked."""


@dataclass(frozen=True)
class MeasuredTree:
    """Which files of a tree are measured, and the limits on reading them."""

    code_trees: tuple[str, ...] = ("enclave", "verifier")
    code_suffixes: tuple[str, ...] = (".py",)
    # Package data that is code or trust: (directory, suffixes), as the package-data globs.
    data_dirs: tuple[tuple[str, tuple[str, ...]], ...] = (("verifier/roots", (".pem", ".der")),)
    max_file_bytes: int = 8 * 1024 * 1024
    max_files: int = 20_000
    max_config_bytes: int = 1024 * 1024


DEFAULT_TREE = MeasuredTree()


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): _freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return value


# The smallest launch configuration the simulator starts from; it adds its own fields (admin
# keys, policy) and the result, canonicalised, is what HOST_DATA / MRCONFIGID / PCR16 attest.
DEFAULT_LAUNCH_CONFIG: Mapping[str, Any] = _freeze(
    {"version": 1, "platform": "sev-snp", "quorum": {"threshold": 1, "admins": []}}
)


def launch_config_for(
    platform: str, base: Mapping[str, Any] = DEFAULT_LAUNCH_CONFIG
) -> dict[str, Any]:
    """A mutable copy of ``base`` with ``platform`` set, for callers that extend it."""
    config: dict[str, Any] = {str(k): _thaw(v) for k, v in base.items()}
    config["platform"] = platform
    return config


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_thaw(v) for v in value]
    return value


def _check_json_value(value: Any, where: str) -> None:
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MeasurementError(f"launch config {where} is not a finite number")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MeasurementError(f"launch config {where} has a non-string key {key!r}")
            _check_json_value(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_value(item, f"{where}[{index}]")
        return
    raise MeasurementError(f"launch config {where} is not JSON ({type(value).__name__})")


def canonical_launch_config(mapping: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes of a launch configuration: sorted keys, no whitespace, UTF-8."""
    if not isinstance(mapping, Mapping):
        raise MeasurementError("a launch config must be a JSON object")
    _check_json_value(mapping, "$")
    return json.dumps(
        _thaw(mapping), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def measured_files(root: Path, tree: MeasuredTree = DEFAULT_TREE) -> list[str]:
    """The POSIX relative paths that are measured, in measurement order."""
    root = Path(root)
    selected: set[str] = set()
    for name in tree.code_trees:
        selected.update(_walk(root, name, tree.code_suffixes))
    for name, suffixes in tree.data_dirs:
        selected.update(_walk(root, name, suffixes, recursive=False))
    if len(selected) > tree.max_files:
        raise MeasurementError(f"more than {tree.max_files} files to measure")
    return sorted(selected)


def _walk(
    root: Path, name: str, suffixes: Sequence[str], *, recursive: bool = True
) -> Iterator[str]:
    base = root / name
    if base.is_symlink() or not base.is_dir():
        raise MeasurementError(f"{name}/ is missing under {root} (or is not a directory)")
    pattern = "**/*" if recursive else "*"
    for path in base.glob(pattern):
        relative = path.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            continue
        if path.suffix not in suffixes:
            continue
        if path.is_symlink():
            # A link could point anywhere; what is measured must be what is in the tree.
            raise MeasurementError(f"{relative.as_posix()} is a symbolic link")
        if path.is_file():
            yield PurePosixPath(*relative.parts).as_posix()


def _code_entries(root: Path, tree: MeasuredTree) -> Iterator[tuple[str, bytes]]:
    for relative in measured_files(root, tree):
        path = Path(root, *relative.split("/"))
        size = path.stat().st_size
        if size > tree.max_file_bytes:
            raise MeasurementError(f"{relative} is larger than {tree.max_file_bytes} bytes")
        content = path.read_bytes()
        if len(content) > tree.max_file_bytes:
            raise MeasurementError(f"{relative} grew past {tree.max_file_bytes} bytes")
        yield relative, content


def _hash_code(hasher: Any, root: Path, tree: MeasuredTree) -> None:
    entries = list(_code_entries(root, tree))
    hasher.update(struct.pack(">Q", len(entries)))
    for relative, content in entries:
        hasher.update(relative.encode("utf-8") + b"\x00" + struct.pack(">Q", len(content)))
        hasher.update(content)


def code_digest(root: Path, tree: MeasuredTree = DEFAULT_TREE) -> bytes:
    """SHA-384 over the measured code files alone (under its own domain), for logs and diffs."""
    hasher = hashlib.sha384(CODE_DIGEST_DOMAIN)
    _hash_code(hasher, Path(root), tree)
    return hasher.digest()


def simulated_measurement(
    root: Path, launch_config: bytes, tree: MeasuredTree = DEFAULT_TREE
) -> bytes:
    """The 48-byte simulated launch measurement of the tree at ``root`` with this config.

    ``launch_config`` is the canonical bytes (see ``canonical_launch_config``): the bytes
    are measured as given, so the caller decides once how the config is encoded.
    """
    if not isinstance(launch_config, bytes | bytearray):
        raise MeasurementError("launch_config must be bytes (use canonical_launch_config)")
    if len(launch_config) > tree.max_config_bytes:
        raise MeasurementError(f"launch config is larger than {tree.max_config_bytes} bytes")
    hasher = hashlib.sha384(MEASUREMENT_DOMAIN)
    _hash_code(hasher, Path(root), tree)
    hasher.update(struct.pack(">Q", len(launch_config)))
    hasher.update(bytes(launch_config))
    digest = hasher.digest()
    assert len(digest) == MEASUREMENT_BYTES
    return digest
