"""The loop's handler for exceptions nothing caught logs types and places, never text."""

from __future__ import annotations

import asyncio
import logging

import pytest

from enclave.unhandled import describe, log_unhandled

SECRET = "Bearer SECRETTOKENXYZ"


def _raise_chained() -> None:
    try:
        raise ValueError(f"the client sent {SECRET}")
    except ValueError as first:
        raise RuntimeError(f"while handling {SECRET}") from first


def test_a_chain_is_described_without_its_messages() -> None:
    with pytest.raises(RuntimeError) as caught:
        _raise_chained()
    text = describe(caught.value)
    assert "builtins.RuntimeError" in text and "builtins.ValueError" in text
    assert "_raise_chained" in text  # where it happened
    assert "SECRETTOKENXYZ" not in text


def test_an_exception_of_a_loop_callback_is_logged_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(log_unhandled)
    try:
        loop.call_soon(_raise_chained)
        loop.run_until_complete(asyncio.sleep(0.01))
    finally:
        loop.close()
    assert "builtins.RuntimeError" in caplog.text
    assert "SECRETTOKENXYZ" not in caplog.text
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_a_self_referencing_chain_ends() -> None:
    error = ValueError("loop")
    error.__context__ = error
    assert describe(error).count("builtins.ValueError") == 1
