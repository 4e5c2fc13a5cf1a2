"""Shamir secret sharing over GF(2^8) (the AES field, x^8 + x^4 + x^3 + x + 1).

Each byte of the secret is the constant term of its own random polynomial of degree
``threshold - 1``; share ``i`` holds the polynomials' values at ``x = i`` (1..255). Any
``threshold`` distinct shares give the secret back by Lagrange interpolation at 0; fewer
are consistent with every possible secret (perfect secrecy), so they reveal nothing that
can be checked. Combining too few shares silently yields a wrong value: callers that need
to know (``providers.quorum``) check the threshold and a commitment.

Field arithmetic is written without secret-indexed tables or secret-dependent branches
(masks instead), as far as Python allows; Python integers are not constant-time, so this
narrows, and does not close, the timing side channel of a software implementation.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_SHARES = 255
_REDUCTION = 0x1B  # x^8 = x^4 + x^3 + x + 1


@dataclass(frozen=True)
class Share:
    """One share: its x coordinate (1..255) and one field element per secret byte."""

    index: int
    value: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if type(self.index) is not int or not 1 <= self.index <= MAX_SHARES:
            raise ValueError("a share index is 1..255")
        if not isinstance(self.value, bytes) or not self.value:
            raise ValueError("a share value is non-empty bytes")


def gf_mul(a: int, b: int) -> int:
    """Product in GF(2^8), branch-free on the operands' bits."""
    result = 0
    for _ in range(8):
        result ^= -(b & 1) & a
        carry = -(a >> 7) & _REDUCTION
        a = ((a << 1) & 0xFF) ^ carry
        b >>= 1
    return result


def gf_inv(a: int) -> int:
    """Multiplicative inverse, a^254 (a^-1 since a^255 = 1); 0 has none."""
    if a == 0:
        raise ZeroDivisionError("0 has no inverse in GF(2^8)")
    # 254 = 0b11111110: a fixed square-and-multiply chain, independent of ``a``.
    result = 1
    power = a
    for bit in range(8):
        power_used = -((254 >> bit) & 1) & 0xFF
        result = gf_mul(result, (power & power_used) | (1 & ~power_used))
        power = gf_mul(power, power)
    return result


def split_secret(secret: bytes, threshold: int, share_count: int) -> tuple[Share, ...]:
    """Split ``secret`` into ``share_count`` shares, any ``threshold`` of which rebuild it."""
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("the secret is non-empty bytes")
    if not 1 <= threshold <= share_count <= MAX_SHARES:
        raise ValueError("need 1 <= threshold <= share_count <= 255")
    # coefficients[k][j]: coefficient of x^k (k >= 1) for secret byte j, uniformly random.
    coefficients = [secrets.token_bytes(len(secret)) for _ in range(threshold - 1)]
    shares = []
    for x in range(1, share_count + 1):
        value = bytearray(len(secret))
        for j, constant in enumerate(secret):
            # Horner: ((c_{t-1} x + c_{t-2}) x + ...) x + c_0
            acc = 0
            for row in reversed(coefficients):
                acc = gf_mul(acc, x) ^ row[j]
            value[j] = gf_mul(acc, x) ^ constant
        shares.append(Share(x, bytes(value)))
    return tuple(shares)


def interpolate(shares: Sequence[Share], x: int) -> bytes:
    """The value at ``x`` of the lowest-degree polynomials through ``shares``."""
    if not shares:
        raise ValueError("no shares")
    length = len(shares[0].value)
    indices = [share.index for share in shares]
    if len(set(indices)) != len(indices):
        raise ValueError("two shares have the same index")
    if any(len(share.value) != length for share in shares):
        raise ValueError("the shares have different lengths")
    if not 0 <= x <= MAX_SHARES:
        raise ValueError("x is a field element")
    result = bytearray(length)
    for i, share in enumerate(shares):
        # Lagrange basis l_i(x) = prod_{m != i} (x - x_m) / (x_i - x_m); minus is XOR here.
        numerator, denominator = 1, 1
        for m, other in enumerate(indices):
            if m != i:
                numerator = gf_mul(numerator, x ^ other)
                denominator = gf_mul(denominator, share.index ^ other)
        basis = gf_mul(numerator, gf_inv(denominator))
        for j, y in enumerate(share.value):
            result[j] ^= gf_mul(y, basis)
    return bytes(result)


def combine_shares(shares: Sequence[Share]) -> bytes:
    """The secret, from at least ``threshold`` distinct shares of one split."""
    return interpolate(shares, 0)
