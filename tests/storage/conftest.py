from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.storage.file_counter import FileCounter


@pytest.fixture
def storage_key() -> bytes:
    return os.urandom(32)


@pytest.fixture
def counter(tmp_path: Path) -> FileCounter:
    return FileCounter(tmp_path / "counter")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "kms.sqlite"
