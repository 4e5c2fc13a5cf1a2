"""``kms release``: attested key release to a SIMULATED client enclave (``kms-sim`` only).

Forms::

    kms --profile FILE release --key ID --simulated-hardware DIR [--measurement HEX]
                               [--out FILE] [--show-key] [--json]
    kms --profile FILE release --example-policy

The command plays an attested client enclave (``kms.release_client``): an ephemeral X25519
key, a release challenge, evidence from the *fake* hardware in DIR (a ``kms-sim`` state
directory or its ``hw/``; the profile's platform) of a client workload's launch (default
the example workload ``SIM_RELEASE_CLIENT``; ``--measurement`` another one), the release,
local unwrapping, and the receipt confirmed with its proof. It prints the release id and
the receipt status. The key material goes only to ``--out FILE`` (mode 0600), and is printed
(base64) only with ``--show-key``.

``--example-policy`` prints a release policy naming the example workload, with
``allow_simulated: true``: give it to ``kms keys release-policy ID --policy FILE``. A
measurement the key's policy does not name is refused by the KMS (exit 5, problem type
``release-refused``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import secrets
from pathlib import Path

from kms.commands import CommandContext
from kms.credentials import open_client, print_json
from kms.errors import UsageError
from kms.release_client import (
    ReleaseClientError,
    client_launch,
    example_release_policy,
    hardware_dir,
    release_to_simulated_client,
)

SIMULATED_WARNING = (
    "SIMULATED: the client enclave is this process and its evidence comes from kms-sim's "
    "fake hardware; only a release policy with allow_simulated accepts it"
)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    release = subparsers.add_parser(
        "release",
        help="SIMULATED attested client: release a key to it, unwrap, confirm receipt",
        description="Attested key release to a SIMULATED client enclave. " + SIMULATED_WARNING
        + ". For kms-sim only.",
    )  # fmt: skip
    release.add_argument("--key", dest="key_id", help="the key to release")
    release.add_argument(
        "--simulated-hardware", type=Path, metavar="DIR",
        help="the kms-sim state directory (or its hw/): the FAKE hardware that makes the "
        "simulated client's evidence",
    )  # fmt: skip
    release.add_argument(
        "--measurement", metavar="HEX",
        help="the simulated client workload's 48-byte launch measurement (default: the "
        "example workload that --example-policy names)",
    )  # fmt: skip
    release.add_argument(
        "--out", type=Path, metavar="FILE", help="write the released key material here (0600)"
    )
    release.add_argument(
        "--show-key", action="store_true", help="also print the key material (base64)"
    )
    release.add_argument(
        "--example-policy", action="store_true",
        help="print a release policy naming the simulated example workload, and exit",
    )  # fmt: skip
    release.add_argument("--json", action="store_true", help="print JSON")
    release.set_defaults(handler=_release)


def _release(ctx: CommandContext) -> int:
    a = ctx.args
    profile = ctx.profile()
    if a.example_policy:
        print_json(ctx, example_release_policy(profile.platform))
        return 0
    if not a.key_id or a.simulated_hardware is None:
        raise UsageError("give --key ID and --simulated-hardware DIR (or --example-policy)")
    launch = client_launch(a.measurement)
    hw_dir = hardware_dir(a.simulated_hardware, profile.platform)
    with open_client(ctx) as client:
        released = release_to_simulated_client(
            client, a.key_id, platform=profile.platform, hw_dir=hw_dir, launch=launch
        )
    if not released.confirmed:
        raise ReleaseClientError(f"{released.release_id}: the KMS did not confirm the receipt")
    if a.out is not None:
        _write_secret(a.out, released.material)
    if ctx.as_json:
        document = released.summary()
        document["out"] = str(a.out) if a.out is not None else None
        if a.show_key:
            document["key_material"] = base64.b64encode(released.material).decode()
        print_json(ctx, document)
        return 0
    out = ctx.stdout
    print(f"SIMULATED release of {released.key_id} v{released.version}", file=out)
    print(f"  release_id:  {released.release_id}", file=out)
    print(f"  client:      {released.measurement} (simulated)", file=out)
    print(f"  receipt:     confirmed at {released.receipt.get('confirmed_at')}", file=out)
    if a.out is not None:
        print(f"  key:         written to {a.out} (0600)", file=out)
    elif not a.show_key:
        print("  key:         not written (give --out FILE)", file=out)
    if a.show_key:
        print(f"  key (b64):   {base64.b64encode(released.material).decode()}", file=out)
    return 0


def _write_secret(path: Path, data: bytes) -> None:
    """``data`` at ``path``, mode 0600 from the first byte, replacing any file there."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
