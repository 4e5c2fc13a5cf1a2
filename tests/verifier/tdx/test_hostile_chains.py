"""A real TDX quote whose PCK certificate chain was replaced by hostile certificates: the
chain is not signed by the quote, so it is parsed before anything can vouch for it, and
every oddity must end in a typed refusal."""

from __future__ import annotations

import base64
import re
import struct

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.verifier.tdx.conftest import ALL_CHAINS_VALID, read
from verifier._internal import der
from verifier._internal.x509 import load_certificates, name_common_name
from verifier.errors import BadCertificateChain
from verifier.roots import TrustRoots
from verifier.tdx.abi import Quote
from verifier.verify import Verifier

QUOTE = read("dcapqvl_v4_quote.bin")
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", re.S)


def with_pck_chain(quote: bytes, chain: bytes) -> bytes:
    """``quote`` with its PCK chain (the last item of the signature data) replaced by
    ``chain``, the three enclosing length fields adjusted and the padding dropped."""
    parsed = Quote.from_bytes(quote)
    start = quote.index(parsed.pck_chain)
    delta = len(chain) - len(parsed.pck_chain)
    out = bytearray(quote[:start] + chain)
    signature_data = len(parsed.signed_data)
    # u32 signature data length; u32 size of certification data type 6 (after the 64-byte
    # signature, the 64-byte key and its u16 type); u32 size of the inner type 5.
    for offset in (signature_data, signature_data + 4 + 128 + 2, start - 4):
        (size,) = struct.unpack_from("<I", out, offset)
        struct.pack_into("<I", out, offset, size + delta)
    return bytes(out)


def pem(cert_der: bytes) -> bytes:
    body = base64.encodebytes(cert_der)
    return b"-----BEGIN CERTIFICATE-----\n" + body + b"-----END CERTIFICATE-----\n"


def with_tbs_name(cert_der: bytes, field: str, name: bytes) -> bytes:
    """The certificate with its issuer or subject Name replaced (the signature no longer
    matches, which is irrelevant: parsing comes first)."""
    cert = der.read_single(cert_der).children()
    tbs = cert[0].children()
    first = 1 if tbs[0].tag == 0xA0 else 0  # serial number, after an explicit version
    tbs[first + {"issuer": 2, "subject": 4}[field]] = der.read_single(name)
    tbs_der = der.encode_tlv(der.TAG_SEQUENCE, b"".join(e.encoded for e in tbs))
    return der.encode_tlv(der.TAG_SEQUENCE, tbs_der + cert[1].encoded + cert[2].encoded)


def _name(*attributes: bytes) -> bytes:
    rdn = der.encode_tlv(der.TAG_SET, b"".join(attributes))
    return der.encode_tlv(der.TAG_SEQUENCE, rdn)


OID_CN = der.encode_tlv(der.TAG_OID, bytes.fromhex("550403"))
MALFORMED_NAMES = {
    "empty-attribute": _name(der.encode_tlv(der.TAG_SEQUENCE, b"")),
    "type-without-value": _name(der.encode_tlv(der.TAG_SEQUENCE, OID_CN)),
    "type-value-and-more": _name(
        der.encode_tlv(der.TAG_SEQUENCE, OID_CN + b"\x0c\x01A" + b"\x0c\x01B")
    ),
}


@pytest.mark.parametrize("name", MALFORMED_NAMES.values(), ids=MALFORMED_NAMES.keys())
def test_malformed_name_has_no_common_name(name: bytes) -> None:
    assert name_common_name(name) == "?"


@pytest.mark.parametrize("name", MALFORMED_NAMES.values(), ids=MALFORMED_NAMES.keys())
@pytest.mark.parametrize("field", ["subject", "issuer"])
def test_pck_leaf_with_malformed_name_is_a_typed_refusal(field: str, name: bytes) -> None:
    # An AttributeTypeAndValue without a value once raised IndexError out of the library.
    chain = Quote.from_bytes(QUOTE).pck_chain
    leaf = load_certificates(chain.rstrip(b"\x00"))[0]
    blocks = _PEM_BLOCK.findall(chain)
    hostile = with_tbs_name(leaf.der, field, name)
    quote = with_pck_chain(QUOTE, pem(hostile) + b"".join(blocks[1:]))
    with pytest.raises(BadCertificateChain):
        Verifier(TrustRoots.production()).verify("tdx", quote, at=ALL_CHAINS_VALID)


def test_rebuilt_quote_with_the_same_chain_is_still_accepted() -> None:
    chain = Quote.from_bytes(QUOTE).pck_chain
    quote = with_pck_chain(QUOTE, chain)
    Verifier(TrustRoots.production()).verify("tdx", quote, at=ALL_CHAINS_VALID)


def _rsa_pss_algorithm(salt_length: int) -> bytes:
    """RSASSA-PSS with SHA-384, MGF1-SHA-384 and the given salt length (RFC 4055)."""
    sha384 = der.encode_tlv(der.TAG_SEQUENCE, bytes.fromhex("0609608648016503040202") + b"\x05\x00")
    mgf1 = der.encode_tlv(der.TAG_SEQUENCE, bytes.fromhex("06092a864886f70d010108") + sha384)
    salt = der.encode_tlv(
        der.TAG_INTEGER, salt_length.to_bytes(salt_length.bit_length() // 8 + 1, "big")
    )
    params = der.encode_tlv(0xA0, sha384) + der.encode_tlv(0xA1, mgf1) + der.encode_tlv(0xA2, salt)
    return der.encode_tlv(
        der.TAG_SEQUENCE,
        bytes.fromhex("06092a864886f70d01010a") + der.encode_tlv(der.TAG_SEQUENCE, params),
    )


def with_signature_algorithm(cert_der: bytes, algorithm: bytes) -> bytes:
    """The certificate claiming ``algorithm`` inside and outside its TBS."""
    cert = der.read_single(cert_der).children()
    tbs = cert[0].children()
    first = 1 if tbs[0].tag == 0xA0 else 0
    tbs[first + 1] = der.read_single(algorithm)
    tbs_der = der.encode_tlv(der.TAG_SEQUENCE, b"".join(e.encoded for e in tbs))
    return der.encode_tlv(der.TAG_SEQUENCE, tbs_der + algorithm + cert[2].encoded)


def _rsa_ca_named(name: x509.Name) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(ALL_CHAINS_VALID.replace(year=2020))
        .not_valid_after(ALL_CHAINS_VALID.replace(year=2040))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("salt_length", [2**31, 2**70])
def test_rsa_pss_salt_length_beyond_a_c_integer_is_a_typed_refusal(salt_length: int) -> None:
    # The leaf's issuer is an RSA CA of the attacker's making; checking the leaf's RSA-PSS
    # signature with such a salt length once raised OverflowError out of the library.
    chain = Quote.from_bytes(QUOTE).pck_chain
    leaf = load_certificates(chain.rstrip(b"\x00"))[0]
    hostile = with_signature_algorithm(leaf.der, _rsa_pss_algorithm(salt_length))
    impostor = _rsa_ca_named(x509.load_der_x509_certificate(leaf.der).issuer)
    quote = with_pck_chain(QUOTE, pem(hostile) + pem(impostor))
    with pytest.raises(BadCertificateChain):
        Verifier(TrustRoots.production()).verify("tdx", quote, at=ALL_CHAINS_VALID)
