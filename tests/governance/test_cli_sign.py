"""``kms governance sign`` works offline: from ``show --json`` output and an admin key file
to an approval the KMS counts (and only for exactly that proposal)."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.governance.approvals import Approval, check_approval
from enclave.governance.errors import InvalidApprovalSignature
from enclave.governance.proposals import Proposal
from enclave.governance.quorum import QuorumConfig
from kms.cli import main
from kms.credentials import write_private_key
from tests.governance.conftest import KMS_ID, MEASUREMENT, START


def test_sign_offline_from_show_output(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    key_file = tmp_path / "alice.key"
    write_private_key(key_file, key)
    proposal = Proposal(
        id="prop_" + "ab" * 16, operation="backup.export", parameters={},
        kms_identity=KMS_ID, measurement=MEASUREMENT, created_at=START,
        expires_at=START + timedelta(hours=1), proposer="principal:prn_x",
    )  # fmt: skip
    shown = tmp_path / "proposal.json"
    shown.write_text(json.dumps({"proposal": proposal.to_dict(), "status": "pending"}))
    out, err = io.StringIO(), io.StringIO()
    assert (
        main(["governance", "sign", str(shown), "--key", str(key_file)], stdout=out, stderr=err)
        == 0
    )
    assert '"operation":"backup.export"' in err.getvalue()  # the admin reads what they sign
    approval = Approval.from_dict(json.loads(out.getvalue()))
    quorum = QuorumConfig.from_launch_config(
        {"quorum": {"threshold": 1, "admins": [key.public_key().public_bytes_raw().hex()]}}
    )
    assert check_approval(approval, proposal, quorum).public_key == approval.public_key
    other = replace(proposal, parameters={"note": "other"})
    with pytest.raises(InvalidApprovalSignature):
        check_approval(approval, other, quorum)
