"""The monotonic state counter that makes a rolled-back database detectable.

The counter lives outside the untrusted host's reach (locally: a token object in the HSM).
Each commit of the store binds the counter's next value into its authenticated state, then
advances the counter; at start, the store's bound value must equal the counter's value.
"""

from __future__ import annotations

from typing import Protocol


class MonotonicCounter(Protocol):
    def read(self) -> int:
        """The current value (0 when never advanced)."""
        ...

    def advance(self, expected: int) -> int:
        """Move from ``expected`` to ``expected + 1`` and return the new value.

        Raises ``CounterConflict`` when the current value is not ``expected`` (another
        writer, or a replayed state), so the caller cannot skip or repeat a value.
        """
        ...


class CounterConflict(Exception):
    """The counter was not at the value the caller expected."""
