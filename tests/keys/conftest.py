from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hsm import support


@pytest.fixture(scope="session")
def shared_hsm() -> Iterator[support.SharedHsm]:
    shared = support.acquire()
    yield shared
    support.release()


@pytest.fixture
def backend(shared_hsm: support.SharedHsm):  # type: ignore[no-untyped-def]
    return shared_hsm.backend
