"""TCB status of a TDX platform from verified TCB Info and QE Identity, as Intel's QVL does.

What this module owns: the pure comparison of SVNs against Intel's signed TCB levels. It
follows the Intel SGX/TDX DCAP Quote Verification Library (QVL):

* ``TcbLevelCheck.cpp`` (QVL spec 4.1.2.4.17): walk ``tcbLevels`` in the order Intel
  publishes them (highest first); the SGX level is the first whose 16 SGX components and
  PCESVN are all <= the PCK certificate's; the TDX level is the first such level whose TDX
  components are all <= TEE_TCB_SVN, where components 0 and 1 (the TDX module SVN and
  version) are skipped when TEE_TCB_SVN[1] > 0 because the module is then judged by its
  own identity. No level -> ``TCB_NOT_SUPPORTED``.
* ``TdxModuleCheck.cpp``: with TEE_TCB_SVN[1] > 0 the module identity ``TDX_<xx>`` (xx =
  TEE_TCB_SVN[1] in hex) gives the module status from TEE_TCB_SVN[0]; it is converged into
  the TDX level status (OutOfDate module makes UpToDate/SWHardeningNeeded OutOfDate, and
  the Configuration* statuses OutOfDateConfigurationNeeded; Revoked wins).
* ``EnclaveReportVerifier.cpp`` (4.1.2.9.5-4.1.2.9.10) for the QE report against the
  TD_QE identity, and the QE-status convergence of ``convergeTcbStatusWithQeTcbStatus``.

Not implemented: the TDX 1.5 TD-relaunch advice (``TDRelaunchCheck.cpp``); a relaunch
advisory therefore shows as the plain level status.
"""

from __future__ import annotations

from dataclasses import dataclass

from verifier.errors import CertificateMismatch, CollateralError
from verifier.tdx.abi import EnclaveReport
from verifier.tdx.collateral import QeIdentity, TcbInfo, TcbLevel, TdxModuleIdentity
from verifier.tdx.pck import PckTcb

UP_TO_DATE = "UpToDate"
SW_HARDENING_NEEDED = "SWHardeningNeeded"
CONFIGURATION_NEEDED = "ConfigurationNeeded"
CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
OUT_OF_DATE = "OutOfDate"
OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
REVOKED = "Revoked"
TCB_NOT_SUPPORTED = "TCB_NOT_SUPPORTED"

LEVEL_STATUSES = frozenset(
    {
        UP_TO_DATE,
        SW_HARDENING_NEEDED,
        CONFIGURATION_NEEDED,
        CONFIGURATION_AND_SW_HARDENING_NEEDED,
        OUT_OF_DATE,
        OUT_OF_DATE_CONFIGURATION_NEEDED,
        REVOKED,
    }
)
ALL_STATUSES = LEVEL_STATUSES | {TCB_NOT_SUPPORTED}
MODULE_STATUSES = frozenset({UP_TO_DATE, OUT_OF_DATE, REVOKED})


@dataclass(frozen=True)
class QeVerdict:
    """The QE report judged against the TD_QE identity."""

    status: str  # UpToDate, OutOfDate, Revoked or TCB_NOT_SUPPORTED
    isv_svn: int
    advisory_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class TcbVerdict:
    status: str
    advisory_ids: tuple[str, ...] = ()
    tcb_date: str | None = None
    sgx_status: str | None = None
    tdx_module_status: str | None = None
    tdx_module_id: str | None = None
    qe_status: str | None = None


def qe_verdict(identity: QeIdentity, report: EnclaveReport) -> QeVerdict:
    """QVL EnclaveReportVerifier: identity fields must match; ISVSVN selects a level."""
    # 4.1.2.9.5: MISCSELECT under the mask (bytes compared in report order).
    if _masked(report.misc_select, identity.miscselect_mask) != identity.miscselect:
        raise CertificateMismatch("QE report MISCSELECT does not match the TD_QE identity")
    # 4.1.2.9.6: ATTRIBUTES under the mask.
    if _masked(report.attributes, identity.attributes_mask) != identity.attributes:
        raise CertificateMismatch("QE report ATTRIBUTES do not match the TD_QE identity")
    # 4.1.2.9.7: MRSIGNER.
    if report.mr_signer != identity.mr_signer:
        raise CertificateMismatch(
            f"QE MRSIGNER {report.mr_signer.hex()} is not {identity.mr_signer.hex()}"
        )
    # 4.1.2.9.8: ISVPRODID.
    if report.isv_prod_id != identity.isv_prod_id:
        raise CertificateMismatch(
            f"QE ISVPRODID {report.isv_prod_id} is not {identity.isv_prod_id}"
        )
    # 4.1.2.9.9-10: the first level (highest ISVSVN first) the QE's ISVSVN reaches.
    for level in sorted(identity.tcb_levels, key=lambda lv: lv.isv_svn, reverse=True):
        if report.isv_svn >= level.isv_svn:
            status = level.status
            if status not in (UP_TO_DATE, REVOKED):
                status = OUT_OF_DATE
            return QeVerdict(status, report.isv_svn, level.advisory_ids)
    return QeVerdict(TCB_NOT_SUPPORTED, report.isv_svn)


def evaluate(
    tcb_info: TcbInfo,
    *,
    pck: PckTcb,
    tee_tcb_svn: bytes,
    mr_signer_seam: bytes,
    seam_attributes: bytes,
    qe: QeVerdict | None,
) -> TcbVerdict:
    """QVL checkTcbLevel for a TDX quote; a missing level is a status, not an error."""
    for level in tcb_info.tcb_levels:
        _check_status(level.status, LEVEL_STATUSES, "TCB level")
    sgx_level, tdx_level = _match_levels(tcb_info.tcb_levels, pck, tee_tcb_svn)
    qe_status = qe.status if qe else None
    if sgx_level is None or tdx_level is None:
        # 4.1.2.4.17.3: no SGX level, or no TDX level at or below the SGX one.
        return TcbVerdict(
            TCB_NOT_SUPPORTED,
            sgx_status=sgx_level.status if sgx_level else None,
            qe_status=qe_status,
        )
    module, module_status, module_advisories = _module_status(
        tcb_info, tee_tcb_svn, mr_signer_seam, seam_attributes
    )
    if module_status == TCB_NOT_SUPPORTED:
        return TcbVerdict(
            TCB_NOT_SUPPORTED,
            sgx_status=sgx_level.status,
            tdx_module_status=module_status,
            tdx_module_id=module.id if module else None,
            qe_status=qe_status,
        )
    status = _converge_module(tdx_level.status, module_status)
    advisories = list(tdx_level.advisory_ids) + list(module_advisories)
    if status != REVOKED and qe is not None:
        status = _converge_qe(status, qe.status)
        advisories += list(qe.advisory_ids)
    if status == TCB_NOT_SUPPORTED:
        advisories = []
    return TcbVerdict(
        status=status,
        advisory_ids=tuple(dict.fromkeys(advisories)),
        tcb_date=tdx_level.tcb_date,
        sgx_status=sgx_level.status,
        tdx_module_status=module_status,
        tdx_module_id=module.id if module else None,
        qe_status=qe_status,
    )


def _match_levels(
    levels: tuple[TcbLevel, ...], pck: PckTcb, tee_tcb_svn: bytes
) -> tuple[TcbLevel | None, TcbLevel | None]:
    # TcbLevelCheck isTdxTcbHigherOrEqual: components 0-1 belong to the module identity
    # when TEE_TCB_SVN[1] (the module version) is non-zero.
    first_tdx = 2 if tee_tcb_svn[1] > 0 else 0
    sgx_level: TcbLevel | None = None
    for level in levels:
        # 4.1.2.4.17.1-2: every SGX component and the PCESVN at or above the level.
        if pck.pce_svn < level.pce_svn or any(
            own < ref for own, ref in zip(pck.sgx_components, level.sgx_components, strict=True)
        ):
            continue
        if sgx_level is None:
            sgx_level = level
        if all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(first_tdx, 16)):
            return sgx_level, level
    return sgx_level, None


def _module_status(
    tcb_info: TcbInfo, tee_tcb_svn: bytes, mr_signer_seam: bytes, seam_attributes: bytes
) -> tuple[TdxModuleIdentity | None, str, tuple[str, ...]]:
    """TdxModuleCheck: the module identity TDX_xx and its status for TEE_TCB_SVN[0]."""
    version, isv_svn = tee_tcb_svn[1], tee_tcb_svn[0]
    if version == 0:
        # checkTdxModuleTcbStatus: quote v4+ with module version 0 needs no identity; the
        # module SVN is then compared as TDX component 0 of the TCB level. QVL 4.1.2.4.11
        # still checks the module signer against ``tdxModule``.
        if tcb_info.tdx_module is not None:
            _check_module_identity(tcb_info.tdx_module, mr_signer_seam, seam_attributes)
        return tcb_info.tdx_module, UP_TO_DATE, ()
    wanted = f"TDX_{version:02X}"
    module = next((m for m in tcb_info.tdx_module_identities if m.id.upper() == wanted), None)
    if module is None:
        raise CollateralError(f"TCB Info has no TDX module identity {wanted}")
    _check_module_identity(module, mr_signer_seam, seam_attributes)
    for level in sorted(module.tcb_levels, key=lambda lv: lv.isv_svn, reverse=True):
        if isv_svn >= level.isv_svn:
            _check_status(level.status, MODULE_STATUSES, f"{wanted} level")
            return module, level.status, level.advisory_ids
    return module, TCB_NOT_SUPPORTED, ()


def _check_module_identity(
    module: TdxModuleIdentity, mr_signer_seam: bytes, seam_attributes: bytes
) -> None:
    # QVL 4.1.2.4.11: MRSIGNERSEAM equal, SEAMATTRIBUTES equal under the mask.
    if mr_signer_seam != module.mr_signer:
        raise CertificateMismatch(
            f"MRSIGNERSEAM {mr_signer_seam.hex()} is not the TDX module signer "
            f"{module.mr_signer.hex()} of {module.id or 'tdxModule'}"
        )
    if _masked(seam_attributes, module.attributes_mask) != module.attributes:
        raise CertificateMismatch(
            f"SEAMATTRIBUTES {seam_attributes.hex()} do not match {module.id or 'tdxModule'}"
        )


def _converge_module(level_status: str, module_status: str) -> str:
    # TdxModuleCheck convergeTcbStatusWithTdxModuleStatus.
    if module_status == OUT_OF_DATE:
        if level_status in (UP_TO_DATE, SW_HARDENING_NEEDED):
            return OUT_OF_DATE
        if level_status in (CONFIGURATION_NEEDED, CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return OUT_OF_DATE_CONFIGURATION_NEEDED
    if module_status == REVOKED:
        return REVOKED
    return level_status


def _converge_qe(level_status: str, qe_status: str) -> str:
    # TcbLevelCheck convergeTcbStatusWithQeTcbStatus (QVL 4.1.2.4.17.5).
    if qe_status == OUT_OF_DATE:
        if level_status in (UP_TO_DATE, SW_HARDENING_NEEDED):
            return OUT_OF_DATE
        if level_status in (CONFIGURATION_NEEDED, CONFIGURATION_AND_SW_HARDENING_NEEDED):
            return OUT_OF_DATE_CONFIGURATION_NEEDED
    if qe_status == REVOKED:
        return REVOKED
    if qe_status == TCB_NOT_SUPPORTED:
        return TCB_NOT_SUPPORTED
    return level_status


def _check_status(status: str, allowed: frozenset[str], what: str) -> None:
    if status not in allowed:
        raise CollateralError(f"{what} has an unrecognised status {status!r}")


def _masked(value: bytes, mask: bytes) -> bytes:
    return bytes(v & m for v, m in zip(value, mask, strict=True))
