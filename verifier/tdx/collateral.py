"""TDX collateral: Intel PCS TCB Info and QE Identity documents, CRLs and issuer chains.

What this module owns: recognising each collateral file a caller hands over and turning it
into frozen typed values, keeping for every signed JSON document the exact bytes Intel
signed. Accepted forms:

* Intel PCS response bodies ``{"tcbInfo": {...}, "signature": "hex"}`` (PCS API v4 "Get
  TDX TCB Info") and ``{"enclaveIdentity": {...}, "signature": "hex"}`` ("Get TD QE
  Identity"). The ECDSA signature covers the raw bytes of the ``tcbInfo`` /
  ``enclaveIdentity`` value exactly as sent, so that substring is cut out of the document
  with the JSON scanner's own offsets and never re-serialised.
* dcap-qvl ``QuoteCollateralV3`` JSON: ``tcb_info`` / ``qe_identity`` as JSON strings with
  hex signatures, issuer chains as PEM, ``pck_crl`` / ``root_ca_crl`` as hex DER.
* CRLs (DER or PEM) and certificates (DER or PEM, e.g. the TCB signing issuer chain).

It verifies nothing: signatures, chains and validity windows are checked by ``verify``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from verifier._internal.memo import Memo
from verifier._internal.x509 import Certificate, RevocationList, load_certificates
from verifier.errors import CollateralError, MalformedCertificate

MAX_COLLATERAL_BYTES = 1 << 20
MAX_COLLATERAL_ITEMS = 32
TCB_COMPONENTS = 16
ECDSA_P256_SIGNATURE_SIZE = 64
TCB_INFO_ID_TDX = "TDX"
QE_IDENTITY_ID_TDX = "TD_QE"
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class SignedBody:
    """The exact bytes Intel signed and the 64-byte r||s ECDSA P-256 signature over them."""

    body: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    @classmethod
    def of(cls, body: bytes, signature_hex: object, what: str) -> SignedBody:
        if not isinstance(signature_hex, str):
            raise CollateralError(f"{what} signature is missing or not a hex string")
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            raise CollateralError(f"{what} signature is not hex") from None
        if len(signature) != ECDSA_P256_SIGNATURE_SIZE:
            raise CollateralError(f"{what} signature is {len(signature)} bytes, not 64")
        return cls(body=body, signature=signature, digest=hashlib.sha256(body).digest())


@dataclass(frozen=True)
class TcbLevel:
    """PCS TDX TCB Info v3 ``tcbLevels[]``: SGX components, PCESVN, TDX components."""

    sgx_components: tuple[int, ...]
    pce_svn: int
    tdx_components: tuple[int, ...]
    tcb_date: str
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class ModuleTcbLevel:
    """PCS TDX TCB Info v3 ``tdxModuleIdentities[].tcbLevels[]``."""

    isv_svn: int
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class TdxModuleIdentity:
    """PCS TDX TCB Info v3 ``tdxModule`` / ``tdxModuleIdentities[]`` (id ``TDX_xx``)."""

    id: str
    mr_signer: bytes
    attributes: bytes
    attributes_mask: bytes
    tcb_levels: tuple[ModuleTcbLevel, ...] = ()


@dataclass(frozen=True)
class TcbInfo:
    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    fmspc: bytes
    pce_id: bytes
    tcb_evaluation_data_number: int
    tdx_module: TdxModuleIdentity | None
    tdx_module_identities: tuple[TdxModuleIdentity, ...]
    tcb_levels: tuple[TcbLevel, ...]
    signed: SignedBody = field(repr=False)

    @classmethod
    def from_json(cls, body: bytes, signature_hex: object) -> TcbInfo:
        signed = SignedBody.of(body, signature_hex, "TCB Info")
        doc = _object(_loads(body, "TCB Info"), "tcbInfo")
        tcb_id = _str(doc, "id")
        version = _int(doc, "version")
        # PCS API "TDX TCB Info" v3: id "TDX", version 3. Earlier versions describe SGX.
        if tcb_id != TCB_INFO_ID_TDX or version < 3:
            raise CollateralError(
                f"TCB Info id {tcb_id!r} version {version} is not a TDX TCB Info (TDX, v3)"
            )
        module = doc.get("tdxModule")
        return cls(
            id=tcb_id,
            version=version,
            issue_date=_time(doc, "issueDate"),
            next_update=_time(doc, "nextUpdate"),
            fmspc=_hex(doc, "fmspc", 6),
            pce_id=_hex(doc, "pceId", 2),
            tcb_evaluation_data_number=_int(doc, "tcbEvaluationDataNumber"),
            tdx_module=_module(_object(module, "tdxModule"), "") if module is not None else None,
            tdx_module_identities=tuple(
                _module(_object(m, "tdxModuleIdentities[]"), None)
                for m in _list(doc, "tdxModuleIdentities", required=False)
            ),
            tcb_levels=tuple(
                _tcb_level(_object(level, "tcbLevels[]")) for level in _list(doc, "tcbLevels")
            ),
            signed=signed,
        )


@dataclass(frozen=True)
class QeTcbLevel:
    isv_svn: int
    status: str
    advisory_ids: tuple[str, ...]


@dataclass(frozen=True)
class QeIdentity:
    """PCS "Get TD QE Identity" v4 body (``enclaveIdentity``, id TD_QE, version 2)."""

    id: str
    version: int
    issue_date: datetime
    next_update: datetime
    tcb_evaluation_data_number: int
    miscselect: bytes
    miscselect_mask: bytes
    attributes: bytes
    attributes_mask: bytes
    mr_signer: bytes
    isv_prod_id: int
    tcb_levels: tuple[QeTcbLevel, ...]
    signed: SignedBody = field(repr=False)

    @classmethod
    def from_json(cls, body: bytes, signature_hex: object) -> QeIdentity:
        signed = SignedBody.of(body, signature_hex, "QE Identity")
        doc = _object(_loads(body, "QE Identity"), "enclaveIdentity")
        qe_id = _str(doc, "id")
        version = _int(doc, "version")
        # QVL 4.1.2.4.14: a TDX quote needs the TD_QE identity, version 2.
        if qe_id != QE_IDENTITY_ID_TDX or version != 2:
            raise CollateralError(
                f"QE Identity id {qe_id!r} version {version} is not the TD_QE identity (v2)"
            )
        levels = []
        for level in _list(doc, "tcbLevels"):
            entry = _object(level, "tcbLevels[]")
            levels.append(
                QeTcbLevel(
                    isv_svn=_int(_object(entry.get("tcb"), "tcb"), "isvsvn"),
                    status=_str(entry, "tcbStatus"),
                    advisory_ids=_advisories(entry),
                )
            )
        return cls(
            id=qe_id,
            version=version,
            issue_date=_time(doc, "issueDate"),
            next_update=_time(doc, "nextUpdate"),
            tcb_evaluation_data_number=_int(doc, "tcbEvaluationDataNumber"),
            miscselect=_hex(doc, "miscselect", 4),
            miscselect_mask=_hex(doc, "miscselectMask", 4),
            attributes=_hex(doc, "attributes", 16),
            attributes_mask=_hex(doc, "attributesMask", 16),
            mr_signer=_hex(doc, "mrsigner", 32),
            isv_prod_id=_int(doc, "isvprodid"),
            tcb_levels=tuple(levels),
            signed=signed,
        )


@dataclass(frozen=True)
class Collateral:
    """Everything recognised in the collateral files of one verification."""

    tcb_info: TcbInfo | None = None
    qe_identity: QeIdentity | None = None
    crls: tuple[RevocationList, ...] = ()
    certificates: tuple[Certificate, ...] = ()

    @property
    def empty(self) -> bool:
        return self.tcb_info is None and self.qe_identity is None and not self.crls

    @classmethod
    def from_items(cls, items: Sequence[bytes], memo: Memo[bytes, Collateral]) -> Collateral:
        if len(items) > MAX_COLLATERAL_ITEMS:
            raise CollateralError(f"more than {MAX_COLLATERAL_ITEMS} collateral files given")
        parts = [
            memo.get_or_compute(hashlib.sha256(item).digest(), partial(_item, item))
            for item in items
        ]
        tcb_infos = [p.tcb_info for p in parts if p.tcb_info is not None]
        qe_identities = [p.qe_identity for p in parts if p.qe_identity is not None]
        # One TCB Info and one QE Identity per verification: with several, which one applies
        # would be the caller's guess, so refuse rather than pick.
        if len(tcb_infos) > 1:
            raise CollateralError("more than one TCB Info given")
        if len(qe_identities) > 1:
            raise CollateralError("more than one QE Identity given")
        return cls(
            tcb_info=tcb_infos[0] if tcb_infos else None,
            qe_identity=qe_identities[0] if qe_identities else None,
            crls=tuple(crl for p in parts for crl in p.crls),
            certificates=tuple(cert for p in parts for cert in p.certificates),
        )


def _item(data: bytes) -> Collateral:
    if len(data) > MAX_COLLATERAL_BYTES:
        raise CollateralError(f"collateral file is larger than {MAX_COLLATERAL_BYTES} bytes")
    stripped = data.strip()
    if stripped.startswith(b"{"):
        return _json_item(stripped)
    if b"-----BEGIN X509 CRL-----" in stripped:
        return Collateral(crls=(_crl(stripped),))
    if b"-----BEGIN CERTIFICATE-----" in stripped:
        return Collateral(certificates=tuple(_certs(stripped)))
    try:
        return Collateral(crls=(RevocationList.from_bytes(data),))
    except (MalformedCertificate, ValueError):
        pass
    try:
        return Collateral(certificates=tuple(load_certificates(data)))
    except (MalformedCertificate, ValueError):
        raise CollateralError(
            "collateral file is neither TCB Info, QE Identity, a CRL nor a certificate"
        ) from None


def _json_item(data: bytes) -> Collateral:
    text = _text(data, "collateral JSON")
    document = _object(_loads(data, "collateral JSON"), "collateral")
    if "tcbInfo" in document or "enclaveIdentity" in document:
        # PCS response body: the signature covers the raw substring of the value.
        spans = _top_level_spans(text)
        if "tcbInfo" in spans:
            body = text[slice(*spans["tcbInfo"])].encode("utf-8")
            return Collateral(tcb_info=TcbInfo.from_json(body, document.get("signature")))
        body = text[slice(*spans["enclaveIdentity"])].encode("utf-8")
        return Collateral(qe_identity=QeIdentity.from_json(body, document.get("signature")))
    if not {"tcb_info", "qe_identity", "pck_crl", "root_ca_crl"} & set(document):
        raise CollateralError("collateral JSON is neither a PCS body nor dcap-qvl collateral")
    return _dcap_qvl(document)


def _dcap_qvl(doc: Mapping[str, Any]) -> Collateral:
    """dcap-qvl QuoteCollateralV3: bodies as JSON strings (their UTF-8 bytes were signed)."""
    tcb_info = qe_identity = None
    if doc.get("tcb_info") is not None:
        tcb_info = TcbInfo.from_json(
            _str(doc, "tcb_info").encode("utf-8"), doc.get("tcb_info_signature")
        )
    if doc.get("qe_identity") is not None:
        qe_identity = QeIdentity.from_json(
            _str(doc, "qe_identity").encode("utf-8"), doc.get("qe_identity_signature")
        )
    crls = []
    for key in ("pck_crl", "root_ca_crl"):
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise CollateralError(f"{key} must be a hex or PEM string")
        raw = value.encode("ascii", errors="replace")
        if not raw.lstrip().startswith(b"-----"):
            try:
                raw = bytes.fromhex(value)
            except ValueError:
                raise CollateralError(f"{key} is neither hex DER nor PEM") from None
        crls.append(_crl(raw))
    certs: list[Certificate] = []
    for key in ("tcb_info_issuer_chain", "qe_identity_issuer_chain", "pck_crl_issuer_chain"):
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            certs.extend(_certs(value.encode("utf-8")))
    return Collateral(tcb_info, qe_identity, tuple(crls), tuple(certs))


def _crl(data: bytes) -> RevocationList:
    try:
        return RevocationList.from_bytes(data)
    except MalformedCertificate as exc:  # corrupt PEM base64 included
        raise CollateralError(f"CRL is malformed: {exc.detail}") from None


def _certs(data: bytes) -> list[Certificate]:
    try:
        return load_certificates(data)
    except MalformedCertificate as exc:  # corrupt PEM base64 included
        raise CollateralError(f"issuer chain is malformed: {exc.detail}") from None


def _top_level_spans(text: str) -> dict[str, tuple[int, int]]:
    """Offsets of each top-level value of a JSON object, as the JSON scanner found them."""
    spans: dict[str, tuple[int, int]] = {}
    try:
        pos = _skip(text, 0)
        if text[pos : pos + 1] != "{":
            raise CollateralError("collateral JSON is not an object")
        pos = _skip(text, pos + 1)
        if text[pos : pos + 1] == "}":
            return spans
        while True:
            key, pos = _DECODER.raw_decode(text, pos)
            if not isinstance(key, str):
                raise CollateralError("collateral JSON object key is not a string")
            pos = _skip(text, pos)
            if text[pos : pos + 1] != ":":
                raise CollateralError("collateral JSON is malformed (expected ':')")
            start = _skip(text, pos + 1)
            _, end = _DECODER.raw_decode(text, start)
            if key in spans:
                raise CollateralError(f"collateral JSON repeats the key {key!r}")
            spans[key] = (start, end)
            pos = _skip(text, end)
            if text[pos : pos + 1] == "}":
                break
            if text[pos : pos + 1] != ",":
                raise CollateralError("collateral JSON is malformed (expected ',' or '}')")
            pos = _skip(text, pos + 1)
    except (ValueError, RecursionError):
        raise CollateralError("collateral JSON is malformed") from None
    if text[pos + 1 :].strip():
        raise CollateralError("collateral JSON has trailing data")
    return spans


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    return match.end() if match else pos


def _text(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CollateralError(f"{what} is not UTF-8") from None


def _loads(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise CollateralError(f"{what} is not valid JSON") from None


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CollateralError(f"{what} must be a JSON object")
    return value


def _list(doc: Mapping[str, Any], key: str, *, required: bool = True) -> list[Any]:
    value = doc.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise CollateralError(f"{key} must be a JSON array")
    return value


def _str(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str):
        raise CollateralError(f"{key} must be a string")
    return value


def _int(doc: Mapping[str, Any], key: str) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise CollateralError(f"{key} must be a non-negative integer")
    return value


def _hex(doc: Mapping[str, Any], key: str, size: int) -> bytes:
    try:
        value = bytes.fromhex(_str(doc, key))
    except ValueError:
        raise CollateralError(f"{key} is not hex") from None
    if len(value) != size:
        raise CollateralError(f"{key} is {len(value)} bytes, expected {size}")
    return value


def _time(doc: Mapping[str, Any], key: str) -> datetime:
    text = _str(doc, key)
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CollateralError(f"{key} {text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise CollateralError(f"{key} {text!r} has no time zone")
    return value


def _advisories(entry: Mapping[str, Any]) -> tuple[str, ...]:
    values = entry.get("advisoryIDs", [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise CollateralError("advisoryIDs must be a list of strings")
    return tuple(values)


def _components(tcb: Mapping[str, Any], key: str) -> tuple[int, ...]:
    items = _list(tcb, key)
    if len(items) != TCB_COMPONENTS:
        raise CollateralError(f"{key} has {len(items)} entries, expected {TCB_COMPONENTS}")
    return tuple(_int(_object(item, key), "svn") for item in items)


def _tcb_level(entry: Mapping[str, Any]) -> TcbLevel:
    tcb = _object(entry.get("tcb"), "tcb")
    return TcbLevel(
        sgx_components=_components(tcb, "sgxtcbcomponents"),
        pce_svn=_int(tcb, "pcesvn"),
        tdx_components=_components(tcb, "tdxtcbcomponents"),
        tcb_date=_str(entry, "tcbDate"),
        status=_str(entry, "tcbStatus"),
        advisory_ids=_advisories(entry),
    )


def _module(entry: Mapping[str, Any], fixed_id: str | None) -> TdxModuleIdentity:
    levels = []
    if fixed_id is None:
        for level in _list(entry, "tcbLevels"):
            item = _object(level, "tcbLevels[]")
            levels.append(
                ModuleTcbLevel(
                    isv_svn=_int(_object(item.get("tcb"), "tcb"), "isvsvn"),
                    status=_str(item, "tcbStatus"),
                    advisory_ids=_advisories(item),
                )
            )
    return TdxModuleIdentity(
        id=_str(entry, "id") if fixed_id is None else fixed_id,
        mr_signer=_hex(entry, "mrsigner", 48),
        attributes=_hex(entry, "attributes", 8),
        attributes_mask=_hex(entry, "attributesMask", 8),
        tcb_levels=tuple(levels),
    )
