"""Access levels: default deny, per-key grants, system levels, isolation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from enclave.auth.access import AccessDenied, Grant, Requirement, check, effective_level
from enclave.auth.principals import Level, Principal

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def principal(level: Level | None, **changes: object) -> Principal:
    base = Principal(
        id="prn_a", name="a", kind="service", public_key=b"\x01" * 32, system_level=level,
        created_at=T0,
    )  # fmt: skip
    return base.with_changes(**changes)


def grant(key_id: str, level: Level) -> Grant:
    return Grant("prn_a", key_id, level, "prn_admin", T0)


@pytest.mark.parametrize("required", list(Level), ids=lambda level: level.name)
def test_no_level_no_grant_is_denied(required: Level) -> None:
    with pytest.raises(AccessDenied):
        check(principal(None), Requirement(required, "key"), "key_1", [])


def test_grant_on_one_key_does_not_cover_another() -> None:
    grants = [grant("key_1", Level.MANAGE_KEY)]
    check(principal(None), Requirement(Level.USE_KEY, "key"), "key_1", grants)
    with pytest.raises(AccessDenied):
        check(principal(None), Requirement(Level.USE_KEY, "key"), "key_2", grants)
    with pytest.raises(AccessDenied):
        check(principal(None), Requirement(Level.CREATE_DELETE_KEYS, "key"), "key_1", grants)


def test_key_grants_never_give_system_levels() -> None:
    grants = [grant("*", Level.SYSTEM_ADMIN)]
    with pytest.raises(AccessDenied):
        check(principal(None), Requirement(Level.VIEW_METADATA, "system"), None, grants)


def test_system_level_covers_keys_and_isolation_removes_everything() -> None:
    admin = principal(Level.SYSTEM_ADMIN)
    check(admin, Requirement(Level.CREATE_DELETE_KEYS, "key"), "key_9", [])
    isolated = admin.with_changes(isolated=True)
    assert effective_level(isolated, "key_9", []) is None
    with pytest.raises(AccessDenied):
        check(isolated, Requirement(Level.VIEW_METADATA, "system"), None, [])


@pytest.mark.parametrize("system", [Level.VIEW_METADATA, Level.USE_KEY, Level.CREATE_DELETE_KEYS])
def test_system_levels_below_admin_give_no_key_access(system: Level) -> None:
    creator = principal(system)
    check(creator, Requirement(system, "system"), None, [])
    check(creator, Requirement(Level.VIEW_METADATA, "key"), "key_someone_elses", [])
    with pytest.raises(AccessDenied):
        check(creator, Requirement(Level.USE_KEY, "key"), "key_someone_elses", [])
    check(
        creator,
        Requirement(Level.USE_KEY, "key"),
        "key_own",
        [grant("key_own", Level.CREATE_DELETE_KEYS)],
    )


def test_records_with_unknown_fields_are_refused() -> None:
    data = grant("key_1", Level.USE_KEY).to_dict() | {"extra": 1}
    with pytest.raises(ValueError, match="unknown"):
        Grant.from_dict(data)
    pdata = principal(None).to_dict() | {"extra": 1}
    with pytest.raises(ValueError, match="unknown"):
        Principal.from_dict(pdata)
