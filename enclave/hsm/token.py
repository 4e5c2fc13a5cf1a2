"""SoftHSM2 token provisioning: a token directory and config of our own under STATE/hsm/.

Owns: locating libsofthsm2.so, writing ``STATE/hsm/softhsm2.conf`` (tokendir inside the
state dir), and initialising the token idempotently with C_InitToken + C_InitPIN.

Must never: put a PIN on a command line, in the config file, in a log or in an error. The
initialisation runs in a child Python process (PINs over a pipe on stdin) for two reasons:
a process can load only one SoftHSM configuration, and the parent may already have its
token loaded; and a child keeps the provisioning C_Initialize off the parent's worker
thread discipline entirely.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from enclave.hsm.config import HsmConfig, HsmPin
from enclave.hsm.errors import HsmAuthenticationError, HsmConfigError, HsmUnavailable

SOFTHSM_LIBRARY_CANDIDATES: tuple[str, ...] = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/lib/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)
PROVISION_TIMEOUT_SECONDS = 60.0


def find_softhsm_library(candidates: tuple[str, ...] = SOFTHSM_LIBRARY_CANDIDATES) -> Path:
    """The path of libsofthsm2.so, or ``HsmUnavailable`` naming how to install it."""
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            return path
    found = ctypes.util.find_library("softhsm2")
    if found and Path(found).is_file():
        return Path(found)
    raise HsmUnavailable(
        "libsofthsm2.so not found; install SoftHSM2 (`make system-deps`, Debian `softhsm2`)"
    )


@dataclass(frozen=True)
class TokenProvisioning:
    """The outcome of ``SoftHsmToken.provision``.

    ``created`` is False when the token already existed; then the PINs are the ones the
    caller passed (``None`` when not passed), since an existing token's PIN cannot be read
    back: the sealing layer keeps it.
    """

    token: SoftHsmToken
    created: bool
    user_pin: HsmPin | None = field(repr=False)
    so_pin: HsmPin | None = field(repr=False)


@dataclass(frozen=True)
class SoftHsmToken:
    """A SoftHSM2 token whose config and object store live under ``state_dir/hsm``."""

    state_dir: Path
    label: str
    library_path: Path

    @property
    def hsm_dir(self) -> Path:
        return self.state_dir / "hsm"

    @property
    def conf_path(self) -> Path:
        return self.hsm_dir / "softhsm2.conf"

    @property
    def token_dir(self) -> Path:
        return self.hsm_dir / "tokens"

    def config(self, **limits: object) -> HsmConfig:
        """The backend configuration for this token (no PIN in it)."""
        return HsmConfig(
            library_path=self.library_path,
            token_label=self.label,
            softhsm_conf=self.conf_path,
            **limits,  # type: ignore[arg-type]
        )

    @classmethod
    def provision(
        cls,
        state_dir: Path,
        label: str,
        so_pin: HsmPin | str | bytes | None = None,
        user_pin: HsmPin | str | bytes | None = None,
        *,
        library_path: Path | None = None,
    ) -> TokenProvisioning:
        """Write the config and initialise the token unless a token with ``label`` exists.

        PINs not given are generated (128 bits from the OS CSPRNG) when the token is new and
        returned in the result for the caller to seal. When the token exists and a user PIN
        is given, the PIN is checked by a login and ``HsmAuthenticationError`` raised if the
        token refuses it.
        """
        if not label or len(label.encode()) > 32:
            raise HsmConfigError("token label must be 1..32 bytes")
        token = cls(Path(state_dir).resolve(), label, library_path or find_softhsm_library())
        token._write_config()
        given_user = HsmPin.of(user_pin) if user_pin is not None else None
        given_so = HsmPin.of(so_pin) if so_pin is not None else None
        new_user = given_user or HsmPin.generate()
        new_so = given_so or HsmPin.generate()
        request = {
            "library": str(token.library_path),
            "label": label,
            "so_pin": new_so.value.hex(),
            "user_pin": new_user.value.hex(),
            "check_user_pin": given_user is not None,
        }
        outcome = token._run_child(request)
        if outcome.get("error") == "pin":
            raise HsmAuthenticationError("the token refused the user PIN")
        if outcome.get("error"):
            raise HsmUnavailable(f"token provisioning failed: {outcome['error']}")
        if outcome["created"]:
            return TokenProvisioning(token, True, new_user, new_so)
        return TokenProvisioning(token, False, given_user, given_so)

    def _write_config(self) -> None:
        self.token_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.hsm_dir, 0o700)
        os.chmod(self.token_dir, 0o700)
        text = (
            "# written by enclave.hsm.token; no secrets in this file\n"
            f"directories.tokendir = {self.token_dir}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
            "slots.mechanisms = ALL\n"
            "library.reset_on_fork = false\n"
        )
        if self.conf_path.exists() and self.conf_path.read_text() == text:
            return
        tmp = self.conf_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.conf_path)

    def _run_child(self, request: dict[str, object]) -> dict[str, object]:
        env = dict(os.environ, SOFTHSM2_CONF=str(self.conf_path))
        try:
            completed = subprocess.run(  # fixed argv; PINs only on stdin
                [sys.executable, "-m", "enclave.hsm.token"],
                input=json.dumps(request).encode(),
                capture_output=True,
                env=env,
                timeout=PROVISION_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise HsmUnavailable("token provisioning timed out") from exc
        lines = completed.stdout.decode(errors="replace").strip().splitlines()
        if completed.returncode != 0 or not lines:
            raise HsmUnavailable(f"token provisioning child failed (exit {completed.returncode})")
        parsed = json.loads(lines[-1])
        if not isinstance(parsed, dict):
            raise HsmUnavailable("token provisioning child answered garbage")
        return parsed


def _child_main() -> int:
    """Runs in the provisioning child: find or initialise the token. Prints one JSON line."""
    import gc

    import pkcs11
    from pkcs11 import TokenFlag

    request = json.loads(sys.stdin.buffer.read())
    label: str = request["label"]
    so_pin = bytes.fromhex(request["so_pin"])
    user_pin = bytes.fromhex(request["user_pin"]).decode("utf-8")
    lib = pkcs11.lib(request["library"])
    answer: dict[str, object]
    try:
        existing = [t for t in lib.get_tokens() if t.label == label]
        if len(existing) > 1:
            answer = {"error": "several tokens carry this label"}
        elif existing:
            answer = {"created": False}
            if request["check_user_pin"]:
                try:
                    existing[0].open(user_pin=user_pin).close()
                except pkcs11.exceptions.PinIncorrect:
                    answer = {"error": "pin"}
        else:
            free = [
                s
                for s in lib.get_slots(token_present=True)
                if not s.get_token().flags & TokenFlag.TOKEN_INITIALIZED
            ]
            if not free:
                answer = {"error": "no free slot"}
            else:
                raw = ctypes.CDLL(request["library"])
                raw.C_InitToken.restype = ctypes.c_ulong
                raw.C_InitToken.argtypes = [
                    ctypes.c_ulong,
                    ctypes.c_char_p,
                    ctypes.c_ulong,
                    ctypes.c_char_p,
                ]
                padded = label.encode().ljust(32, b" ")
                rv = raw.C_InitToken(free[0].slot_id, so_pin, len(so_pin), padded)
                if rv != 0:
                    answer = {"error": f"C_InitToken returned 0x{rv:x}"}
                else:
                    token = lib.get_token(token_label=label)
                    session = token.open(rw=True, so_pin=so_pin.decode("utf-8"))
                    session.init_pin(user_pin)
                    session.close()
                    del session, token
                    answer = {"created": True}
            del free
        del existing
    finally:
        gc.collect()  # drop every object holding the function list before C_Finalize
        lib.finalize()
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
