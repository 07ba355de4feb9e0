"""The ``keygate`` command's front door.

``keygate sign`` needs only the SDK (``pip install keygate``); every other command is the server's and
needs the server extra (``pip install 'keygate[server]'``). Where that extra is missing, this says so in
one line instead of a traceback about a missing module.
"""

from __future__ import annotations

import sys

SERVER_EXTRA_HINT = "pip install 'keygate[server]'"


def _sdk_only_usage(args: list[str], missing: str) -> int:
    asked_for_help = not args or args[0] in {"--help", "-h"}
    command = "keygate" if asked_for_help else f"keygate {args[0]}"
    print(f"{command}: this installation has keygate's SDK only (the module {missing} is missing).\n"
          f"  keygate sign --api-key K --user-id U --nonce N [--headers]   works as it is\n"
          f"  every other command is the server's: {SERVER_EXTRA_HINT}",
          file=sys.stdout if asked_for_help else sys.stderr)
    return 0 if asked_for_help else 2


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["sign"]:
        from keygate.sdk.sign import main as sign

        raise SystemExit(sign(args[1:]))
    try:
        from keygate.cli.main import main as server_cli
    except ImportError as exc:
        if exc.name is None or exc.name.split(".")[0] == "keygate":
            raise
        raise SystemExit(_sdk_only_usage(args, exc.name)) from None
    server_cli()
