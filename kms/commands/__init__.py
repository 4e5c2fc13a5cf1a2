"""Subcommands of ``kms``, one module per area. Each module has ``register(subparsers)``,
which adds its parsers with ``set_defaults(handler=...)``; a handler takes a
``CommandContext`` and returns the exit code, raising ``kms.errors.KmsError`` on failure
(the CLI prints one line on stderr, the problem document with ``--json``, and exits with
the error's code)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from types import ModuleType
from typing import IO, BinaryIO

from kms.errors import ProfileError
from kms.profile import Profile


@dataclass(frozen=True)
class CommandContext:
    args: argparse.Namespace
    profile_path: str | None
    stdin: BinaryIO
    stdout: IO[str]
    stderr: IO[str]

    @property
    def as_json(self) -> bool:
        return bool(getattr(self.args, "json", False))

    def profile(self) -> Profile:
        if not self.profile_path:
            raise ProfileError("no profile: give --profile FILE (or set $KMS_PROFILE)")
        return Profile.load(self.profile_path)


def _modules() -> tuple[ModuleType, ...]:
    from kms.commands import (
        audit,
        backup,
        crypto,
        emergency,
        governance,
        keys,
        principals,
        release,
        report,
    )

    return (keys, crypto, release, principals, audit, report, governance, backup, emergency)


COMMAND_MODULES: tuple[ModuleType, ...] = _modules()
