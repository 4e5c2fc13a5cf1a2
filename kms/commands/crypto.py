"""``kms encrypt|decrypt|datakey|re-encrypt|sign|verify|sharing``: the cryptographic operations.

Forms::

    kms encrypt --key ID [--context K=V]... [--json]   stdin: plaintext; prints the base64
                                                        ciphertext (it names key and version)
    kms decrypt [--context K=V]... [--key ID] [--json] stdin: that base64; writes the plaintext
    kms datakey --key ID [--context K=V]... [--no-plaintext] [--length 16|24|32] --json
                                                        prints {"plaintext": b64, "ciphertext": b64}
    kms re-encrypt [--context K=V]... [--to-key ID] [--to-context K=V]...   stdin: base64
    kms sign --key ID [--json]                          stdin: message; prints the base64 signature
    kms verify --key ID --signature B64 [--version N]  stdin: message; exit 0 valid, 1 invalid
    kms sharing create --target PRINCIPAL --ttl SECONDS [--json]

The encryption context must be given again, identical, to decrypt.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from kms.commands import CommandContext
from kms.credentials import open_client, parse_context, print_json, read_stdin, write_binary
from kms.errors import UsageError

MAX_INPUT_BYTES = 700 * 1024  # base64 of it fits the KMS's 1 MiB JSON body cap
MAX_CIPHERTEXT_TEXT = 1024 * 1024
EXIT_INVALID_SIGNATURE = 1


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _ciphertext_from_stdin(ctx: CommandContext) -> str:
    text = read_stdin(ctx, MAX_CIPHERTEXT_TEXT)
    compact = b"".join(text.split())
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("the input is not a base64 ciphertext (as `kms encrypt` prints)") from None
    if not compact:
        raise UsageError("no ciphertext on stdin")
    return compact.decode("ascii")


def _encrypt(ctx: CommandContext) -> int:
    plaintext = read_stdin(ctx, MAX_INPUT_BYTES)
    body = {"key_id": ctx.args.key, "plaintext": _b64(plaintext),
            "context": parse_context(ctx.args.context)}  # fmt: skip
    with open_client(ctx) as client:
        result = client.post("/v1/encrypt", body)
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print(result["ciphertext"], file=ctx.stdout)
    return 0


def _decrypt(ctx: CommandContext) -> int:
    body: dict[str, Any] = {"ciphertext": _ciphertext_from_stdin(ctx),
                            "context": parse_context(ctx.args.context)}  # fmt: skip
    if ctx.args.key is not None:
        body["key_id"] = ctx.args.key
    with open_client(ctx) as client:
        result = client.post("/v1/decrypt", body)
    if ctx.as_json:
        print_json(ctx, result)
    else:
        write_binary(ctx, base64.b64decode(result["plaintext"]))
    return 0


def _datakey(ctx: CommandContext) -> int:
    body = {"key_id": ctx.args.key, "context": parse_context(ctx.args.context),
            "plaintext": not ctx.args.no_plaintext, "length": ctx.args.length}  # fmt: skip
    with open_client(ctx) as client:
        result = client.post("/v1/datakey", body)
    if ctx.as_json:
        print_json(ctx, result)
    else:
        if "plaintext" in result:
            print(f"plaintext  {result['plaintext']}", file=ctx.stdout)
        print(f"ciphertext {result['ciphertext']}", file=ctx.stdout)
    return 0


def _re_encrypt(ctx: CommandContext) -> int:
    body: dict[str, Any] = {"ciphertext": _ciphertext_from_stdin(ctx),
                            "context": parse_context(ctx.args.context)}  # fmt: skip
    if ctx.args.to_key is not None:
        body["destination_key_id"] = ctx.args.to_key
    if ctx.args.to_context is not None:
        body["destination_context"] = parse_context(ctx.args.to_context)
    with open_client(ctx) as client:
        result = client.post("/v1/re-encrypt", body)
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print(result["ciphertext"], file=ctx.stdout)
    return 0


def _sign(ctx: CommandContext) -> int:
    message = read_stdin(ctx, MAX_INPUT_BYTES)
    with open_client(ctx) as client:
        result = client.post("/v1/sign", {"key_id": ctx.args.key, "message": _b64(message)})
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print(result["signature"], file=ctx.stdout)
    return 0


def _verify(ctx: CommandContext) -> int:
    message = read_stdin(ctx, MAX_INPUT_BYTES)
    try:
        signature = base64.b64decode("".join(ctx.args.signature.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("--signature must be base64 (as `kms sign` prints)") from None
    body: dict[str, Any] = {"key_id": ctx.args.key, "message": _b64(message),
                            "signature": _b64(signature)}  # fmt: skip
    if ctx.args.version is not None:
        body["version"] = ctx.args.version
    with open_client(ctx) as client:
        result = client.post("/v1/verify", body)
    valid = bool(result["valid"])
    if ctx.as_json:
        print_json(ctx, result)
    elif valid:
        print("signature valid", file=ctx.stdout)
    if not valid:
        print("kms: the signature is not valid for this message and key", file=ctx.stderr)
    return 0 if valid else EXIT_INVALID_SIGNATURE


def _sharing_create(ctx: CommandContext) -> int:
    with open_client(ctx) as client:
        result = client.post("/v1/sharing", {"target": ctx.args.target,
                                             "ttl_seconds": ctx.args.ttl})  # fmt: skip
    if ctx.as_json:
        print_json(ctx, result)
    else:
        print(f"{result['id']}  shared with {result['target']} until {result['expires_at']}",
              file=ctx.stdout)  # fmt: skip
    return 0


def _context_flag(parser: Any, name: str = "--context") -> None:
    parser.add_argument(name, action="append", metavar="K=V",
                        help="encryption context pair (repeat)")  # fmt: skip


def register(commands: Any) -> None:
    encrypt = commands.add_parser("encrypt", help="encrypt stdin under a key")
    encrypt.add_argument("--key", required=True)
    _context_flag(encrypt)
    encrypt.add_argument("--json", action="store_true")
    encrypt.set_defaults(handler=_encrypt)

    decrypt = commands.add_parser("decrypt", help="decrypt a base64 ciphertext from stdin")
    decrypt.add_argument("--key", help="refuse a ciphertext of another key")
    _context_flag(decrypt)
    decrypt.add_argument("--json", action="store_true")
    decrypt.set_defaults(handler=_decrypt)

    datakey = commands.add_parser("datakey", help="a fresh data key, wrapped under a key")
    datakey.add_argument("--key", required=True)
    _context_flag(datakey)
    datakey.add_argument("--no-plaintext", action="store_true", help="only the wrapped copy")
    datakey.add_argument("--length", type=int, default=32, choices=(16, 24, 32))
    datakey.add_argument("--json", action="store_true")
    datakey.set_defaults(handler=_datakey)

    re_encrypt = commands.add_parser("re-encrypt", help="re-encrypt inside the enclave")
    _context_flag(re_encrypt)
    re_encrypt.add_argument("--to-key")
    _context_flag(re_encrypt, "--to-context")
    re_encrypt.add_argument("--json", action="store_true")
    re_encrypt.set_defaults(handler=_re_encrypt)

    sign = commands.add_parser("sign", help="sign stdin with a signing key")
    sign.add_argument("--key", required=True)
    sign.add_argument("--json", action="store_true")
    sign.set_defaults(handler=_sign)

    verify = commands.add_parser("verify", help="verify a signature over stdin (exit 0/1)")
    verify.add_argument("--key", required=True)
    verify.add_argument("--signature", required=True)
    verify.add_argument("--version", type=int)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_verify)

    sharing = commands.add_parser("sharing", help="temporary keys shared with a principal")
    sharing_sub = sharing.add_subparsers(dest="sharing_command", required=True)
    create = sharing_sub.add_parser("create", help="a sharing key with a TTL")
    create.add_argument("--target", required=True, help="the other principal's id")
    create.add_argument("--ttl", type=int, required=True, help="seconds (<= 30 days)")
    create.add_argument("--json", action="store_true")
    create.set_defaults(handler=_sharing_create)
