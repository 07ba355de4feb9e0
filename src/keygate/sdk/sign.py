"""``keygate sign``: compute the APEX signature from the command line, with the SDK alone.

Plain ``argparse`` and the standard library, so that it runs where only the SDK is installed (no
server extra). The secret never comes from the command line, where it would land in shell history and
``ps``: it is read from ``--secret-file``, an environment variable, or stdin.

For an ``ed25519`` key, ``--private-key FILE`` (``-``: stdin) signs with its Ed25519 private key (a
PKCS#8 PEM, the 32-byte seed in hex or base64, or the console's JSON export); that needs the
``cryptography`` package (``pip install 'keygate[ed25519]'``).

``keygate sign --v2 --method POST --url https://host/AP/GetUserInfo --body '{}'`` prints the Signature v2
(RFC 9421) headers of that request instead: ``Content-Digest`` (with a body), ``Signature-Input`` and
``Signature``; send the body byte for byte as given.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, NoReturn

from keygate.domain.signature import compute_signature

if TYPE_CHECKING:
    from keygate.sdk.ed25519 import Ed25519Signer

DESCRIPTION = "Compute the APEX signature. The secret never comes from the command line."
SECRET_ENV = "KEYGATE_API_SECRET"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.format_usage()}error: {message}\n")


def _parser(prog: str) -> _Parser:
    parser = _Parser(prog=prog, description=DESCRIPTION, allow_abbrev=False)
    parser.add_argument("--api-key", required=True, metavar="KEY", help="The API key")
    parser.add_argument("--user-id", metavar="ID", help="The user id (APEX signature)")
    parser.add_argument("--nonce", metavar="NONCE", help="The nonce (v2: default 128 random bits)")
    parser.add_argument("--v2", action="store_true", help="Print the Signature v2 (RFC 9421) headers of one request")
    parser.add_argument("--method", metavar="METHOD", help="v2: the request's method, e.g. POST")
    parser.add_argument("--url", metavar="URL", help="v2: the request's URL (its path and query are signed)")
    parser.add_argument("--body", metavar="TEXT", default="", help="v2: the request's body (its Content-Digest is signed)")
    parser.add_argument("--created", metavar="UNIX", type=int, help="v2: the signature's created time (default: now)")
    parser.add_argument("--secret-file", metavar="PATH", help="Read the secret from this file ('-' for stdin)")
    parser.add_argument("--secret-env", metavar="NAME", default=SECRET_ENV,
                        help=f"Read the secret from this environment variable (default: {SECRET_ENV})")
    parser.add_argument("--private-key", metavar="PATH",
                        help="ed25519 keys: sign with the Ed25519 private key in this file ('-' for stdin)")
    parser.add_argument("--encoding", choices=("base64", "base64url", "hex"), default="base64",
                        help="ed25519 keys: how the signature is written (default base64)")
    parser.add_argument("--headers", action="store_true", help="Print the four request headers, not just the signature")
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _read_secret(secret_file: str | None, secret_env: str) -> str | None:
    """The secret from the first source given, or None (after saying why) when there is none."""
    if secret_file is not None:
        if secret_file == "-":
            return sys.stdin.read()
        try:
            with open(secret_file, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a readable text file"
            _fail(f"cannot read the secret file {secret_file}: {reason}")
            return None
    if os.environ.get(secret_env):
        return os.environ[secret_env]
    if not sys.stdin.isatty():
        return sys.stdin.read()
    _fail(f"give the secret with --secret-file, ${secret_env}, or on stdin")
    return None


def _ed25519_signer(args: argparse.Namespace) -> "Ed25519Signer | None":
    from keygate.sdk.ed25519 import Ed25519Signer, Ed25519Unavailable, PrivateKeyError

    try:
        if args.private_key == "-":
            text = sys.stdin.read()
        else:
            with open(args.private_key, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a readable text file"
        _fail(f"cannot read the private key file {args.private_key}: {reason}")
        return None
    try:
        return Ed25519Signer(text)
    except (Ed25519Unavailable, PrivateKeyError) as exc:
        _fail(str(exc))
        return None


def _print_v2(args: argparse.Namespace, secret: str | None, private_key: bytes | None) -> int:
    from keygate.sdk.client import v2_headers

    try:
        headers = v2_headers(args.method, args.url, args.body.encode(), args.api_key, secret,
                             created=args.created, nonce=args.nonce, private_key=private_key)
    except ValueError as exc:
        return _fail(str(exc))
    print("\n".join(f"{name}: {value}" for name, value in headers.items()))
    return 0


def main(argv: list[str] | None = None, prog: str = "keygate sign") -> int:
    """Run ``keygate sign`` with ``argv`` (the arguments after ``sign``); return the exit status."""
    parser = _parser(prog)
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Name unknown options only: the word after one may be the secret someone tried to pass.
        unknown = [word.split("=", 1)[0] for word in extra if word.startswith("-")]
        parser.error(f"no such option: {', '.join(unknown)}" if unknown else "unexpected argument")
    if args.v2:
        if not args.method or not args.url:
            parser.error("--v2 needs --method and --url")
    elif args.user_id is None or args.nonce is None:
        parser.error("the following arguments are required: --user-id, --nonce (or --v2)")
    if args.private_key is not None:
        if args.secret_file is not None:
            return _fail("give --private-key (ed25519 keys) or the secret (hmac keys), not both")
        signer = _ed25519_signer(args)
        if signer is None:
            return 2
        if args.v2:
            return _print_v2(args, None, signer.raw_private_key())
        try:
            signature = signer.apex_signature(args.nonce, args.user_id, args.api_key, args.encoding)
        except ValueError as exc:
            return _fail(str(exc))
    else:
        secret = _read_secret(args.secret_file, args.secret_env)
        if secret is None:
            return 2
        secret = secret.strip()
        if not secret:
            return _fail("the secret is empty")
        if args.v2:
            return _print_v2(args, secret, None)
        signature = compute_signature(secret, args.nonce, args.user_id, args.api_key)
    if args.headers:
        print(f"APIKey: {args.api_key}\nSignature: {signature}\nUserId: {args.user_id}\nNonce: {args.nonce}")
    else:
        print(signature)
    return 0
