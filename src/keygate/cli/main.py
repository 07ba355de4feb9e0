"""``keygate``: run the server and manage users and keys from the server's own machine.

Every command goes through the service layer's use cases, exactly like the HTTP API, as the operator
principal (``keygate.service.principal.OPERATOR``): the audit trail records "operator" as the actor.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from keygate import logs
from keygate.config import InvalidSetting, Settings
from keygate.domain.errors import DatabaseUnavailable, KeygateError
from keygate.domain.iprules import IpAllowlist
from keygate.domain.keys import parse_expiry
from keygate.domain.permissions import format_permissions, parse_permissions
from keygate.domain.replay import parse_replay_mode

if TYPE_CHECKING:
    from keygate.service import Keygate, Principal

app = typer.Typer(help="keygate: APEX-compatible API-key authentication.", no_args_is_help=True, add_completion=False)
user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
key_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(key_app, name="key")

T = TypeVar("T")


@app.callback()
def _check_settings(ctx: typer.Context) -> None:
    # Every command checks every KEYGATE_* variable first, so a bad one stops it with one line
    # (see main()). `serve` and `sign` check them themselves: with their options (which win over
    # the environment), and the variable `sign --secret-env` names.
    if ctx.invoked_subcommand not in ("serve", "sign"):
        _settings()


_checked: list[Settings] = []


def _settings() -> Settings:
    """The settings from the environment, read and checked once per command (the callback above, then the command)."""
    if not _checked:
        _checked.append(Settings.from_env())
    return _checked[0]


def _run(work: Callable[[Keygate], Awaitable[T]], *, create_master_key: bool = False, setup: bool = False) -> T:
    """Open the service, run one use case, close. Known refusals print a message, not a trace.

    Only ``init``, ``serve`` and ``migrate`` apply migrations: ``setup`` (``init``) leaves starting the
    service to ``work``, which migrates. Every other command checks with one query that the schema
    is at this keygate's revision, and if not stops with one line saying how to fix it.

    The service layer is imported here, not at the top, so that ``keygate sign`` and ``--help``
    start in a fraction of the time.
    """
    from keygate.service import Keygate

    async def main() -> T:
        kg = Keygate(_settings(), create_master_key=create_master_key, serving=False)
        try:
            if not setup:
                await kg.start(migrate_schema=False, bootstrap_admin=False)
            return await work(kg)
        finally:
            await kg.close()

    return _guarded(main)


def _guarded(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main`` on an event loop; a refusal or an unreachable database prints one line and exits 2."""
    from sqlalchemy.exc import SQLAlchemyError

    from keygate.service import MasterKeyError
    from keygate.store.database import SchemaNotCurrent

    try:
        return asyncio.run(main())
    except DatabaseUnavailable as exc:
        _database_unavailable(exc)
    except (KeygateError, MasterKeyError, SchemaNotCurrent) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except (OSError, SQLAlchemyError) as exc:
        _database_unavailable(exc)


def _database_unavailable(exc: BaseException) -> NoReturn:
    """The database could not be opened: say so in one line (never echoing the URL, which may hold a password)."""
    if isinstance(exc, DatabaseUnavailable) and exc.__cause__ is not None:
        exc = exc.__cause__
    cause = getattr(exc, "orig", None) or exc
    reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    typer.secho(f"error: cannot open the database named by KEYGATE_DATABASE_URL (or the SQLite file in "
                f"KEYGATE_DATA_DIR): {type(cause).__name__}: {reason}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _operator() -> Principal:
    from keygate.service.principal import OPERATOR

    return OPERATOR


async def _user(kg: Keygate, who: str):  # type: ignore[no-untyped-def]
    user = await kg.users.get(int(who)) if who.isdigit() else await kg.users.get_by_name(who)
    if user is None:
        raise KeygateError(f"no such user: {who}")
    return user


async def _key_owner(kg: Keygate, api_key: str) -> int:
    """The user id that owns ``api_key``; the CLI acts on keys by key alone."""
    return await kg.keys.owner_of(_operator(), api_key)


def _read_password(prompt: bool, stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    env = os.environ.get("KEYGATE_PASSWORD")
    if env:
        return env
    if prompt:
        return str(typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    raise typer.BadParameter("give the password with --password-stdin, KEYGATE_PASSWORD, or interactively")


@app.command()
def init() -> None:
    """Create the data folder, master key and database, and the first admin (password printed once)."""

    async def work(kg: Keygate) -> None:
        _print_bootstrap(await kg.start())  # migrates, and makes the first admin if there is no user

    _run(work, create_master_key=True, setup=True)


@app.command()
def migrate() -> None:
    """Bring the database schema to this keygate's revision (serve and init do it too); nothing else."""
    from keygate.store.database import HEAD_REVISION, REVISIONS, SchemaNotCurrent, create_engine, schema_revision
    from keygate.store.database import migrate as apply_migrations

    settings = _settings()

    async def main() -> None:
        engine = create_engine(settings.resolved_database_url, settings.database_connect_timeout_seconds,
                               settings.database_statement_timeout_seconds)
        try:
            before = await schema_revision(engine)
            if before == (HEAD_REVISION,):
                typer.echo(f"the database schema is already at revision {HEAD_REVISION}")
                return
            if len(before) > 1 or not set(before) <= set(REVISIONS):
                raise SchemaNotCurrent(before)  # a newer keygate's schema: Alembic could not go down from it
            await apply_migrations(engine)
            typer.echo(f"the database schema is now at revision {HEAD_REVISION} (was {', '.join(before) or 'empty'})")
        finally:
            await engine.dispose()

    _guarded(main)


def _print_bootstrap(boot: Any) -> None:
    if boot.master_key_created:
        typer.echo("Created a new master key (keep a backup: without it no API secret can be recovered).")
    if boot.admin_password:
        bar = "=" * 64
        typer.echo(f"{bar}\nFirst admin account created. This password is shown only once:\n"
                   f"  username: {boot.admin_username}\n  password: {boot.admin_password}\n{bar}")


SERVE_OPTIONS = {"host": "--host", "port": "--port", "tls_cert_file": "--tls-cert", "tls_key_file": "--tls-key"}


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on [KEYGATE_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [KEYGATE_PORT]")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", metavar="FILE",
                                                  help="Serve HTTPS and WSS with this PEM certificate (chain) [KEYGATE_TLS_CERT_FILE]")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", metavar="FILE",
                                                 help="The certificate's PEM private key, unencrypted [KEYGATE_TLS_KEY_FILE]")] = None,
) -> None:
    """Set up on first start (as `init`), then serve the API (over TLS with --tls-cert and --tls-key)."""
    from keygate.cli.tls import TlsFileError, check_tls_files

    given = {"host": host, "port": port, "tls_cert_file": tls_cert, "tls_key_file": tls_key}
    overrides: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    settings = Settings.from_env(option_names=SERVE_OPTIONS, **overrides)
    if workers < 1:
        _refuse("--workers must be 1 or more")
    ssl_options: dict[str, Any] = {}
    if settings.tls_cert_file is not None and settings.tls_key_file is not None:
        try:
            for warning in check_tls_files(settings.tls_cert_file, settings.tls_key_file):
                typer.secho(warning, fg=typer.colors.YELLOW, err=True)
        except TlsFileError as exc:
            _refuse(str(exc))
        ssl_options = {"ssl_certfile": str(settings.tls_cert_file), "ssl_keyfile": str(settings.tls_key_file)}

    # Imported once the settings are known to be good, so that a refusal comes at once.
    import uvicorn
    from sqlalchemy.exc import SQLAlchemyError

    from keygate.api import connection_guard, create_app
    from keygate.service import Keygate, MasterKeyError

    async def setup() -> Any:
        kg = Keygate(settings, create_master_key=True, serving=False)
        try:
            return await kg.start()
        finally:
            await kg.close()

    try:
        _print_bootstrap(asyncio.run(setup()))
    except MasterKeyError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except (OSError, SQLAlchemyError, DatabaseUnavailable) as exc:
        _database_unavailable(exc)
    scheme = "https" if ssl_options else "http"
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    typer.echo(f"keygate listening on {scheme}://{shown_host}:{settings.port} (docs: /docs, console: /console)")
    log_config = logs.log_config(settings.log_format, settings.log_level)
    _raise_open_files_limit()
    connection_guard.configure(settings)
    guarded = "keygate.api.connection_guard:GuardedHttpTools"  # each worker configures it (keygate.api.asgi)
    if workers > 1:
        # Each worker imports keygate.api.asgi and reads the environment: give it this command's settings.
        os.environ.update({f"KEYGATE_{name.upper()}": str(value) for name, value in overrides.items()})
        # TLS is uvicorn's (ssl_options); keygate.api.asgi refuses these, as uvicorn alone would ignore them.
        for name in ("KEYGATE_TLS_CERT_FILE", "KEYGATE_TLS_KEY_FILE"):
            os.environ.pop(name, None)
        with _metrics_folder():
            uvicorn.run("keygate.api.asgi:app", host=settings.host, port=settings.port, workers=workers,
                        log_level=settings.log_level, log_config=log_config, access_log=False, proxy_headers=False,
                        timeout_keep_alive=settings.keep_alive_seconds, http=guarded, **ssl_options)
    else:
        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                    log_config=log_config, access_log=False, proxy_headers=False,
                    timeout_keep_alive=settings.keep_alive_seconds, http=guarded, **ssl_options)


def _raise_open_files_limit() -> None:
    """Open files (each connection is one) up to the hard limit the system allows this process: the
    soft limit is often 1024, which a few hundred idle connections from a handful of addresses fill."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


@contextmanager
def _metrics_folder() -> Iterator[None]:
    """Where the workers keep their metrics (prometheus-client's multiprocess mode), so that /metrics
    on any worker answers for all of them. ``PROMETHEUS_MULTIPROC_DIR`` if the operator set it (emptied
    of the last run's files), else a private temporary folder, removed at exit."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="keygate-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


def _refuse(message: str) -> NoReturn:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False)
def sign(ctx: typer.Context) -> None:
    """Compute the APEX signature. The secret never comes from the command line."""
    # One implementation, in the SDK, so that `keygate sign` works without the server extra
    # (keygate.cli.entry sends `keygate sign` there before this module is even imported).
    from keygate.sdk.sign import main as sign_main

    raise typer.Exit(sign_main(ctx.args))


@user_app.command("create")
def user_create(
    username: str,
    email: Annotated[str, typer.Option(help="Email address")] = "",
    admin: Annotated[bool, typer.Option("--admin", help="Make an administrator")] = False,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
) -> None:
    """Create a user (password from --password-stdin, $KEYGATE_PASSWORD, or a prompt)."""
    password = _read_password(prompt=True, stdin=password_stdin)

    async def work(kg: Keygate) -> None:
        user = await kg.users.create(_operator(), username, password, email, is_admin=admin)
        typer.echo(f"created user {user.username} with UserId {user.user_id}")

    _run(work)


_SEARCH_HELP = "A user id (a number), or the start of a username (any case)"
_PAGE_HELP = "Which page of --limit rows"
_LIMIT_HELP = "Rows per page (1 to 500)"


def _more(found: Any, page: int) -> None:
    """Say on stderr (stdout keeps one row per line) that another page follows."""
    if found.has_next:
        typer.echo(f"(more: --page {page + 1})", err=True)


@user_app.command("list")
def user_list(
    search: Annotated[str, typer.Option("--search", "-s", help=_SEARCH_HELP)] = "",
    page: Annotated[int, typer.Option("--page", help=_PAGE_HELP)] = 1,
    limit: Annotated[int, typer.Option("--limit", help=_LIMIT_HELP)] = 50,
) -> None:
    """List users, a page at a time: the newest first, or by name for a --search."""

    async def work(kg: Keygate) -> None:
        found = await kg.users.page(_operator(), search, page, limit)
        for u in found.items:
            flags = ",".join(f for f, on in (("admin", u.is_admin), ("locked", u.locked), ("2fa", u.uses_2fa)) if on)
            typer.echo(f"{u.user_id}\t{u.username}\t{u.email}\t{flags}")
        _more(found, page)

    _run(work)


@user_app.command("lock")
def user_lock(user: str) -> None:
    """Lock a user and end their sessions."""
    _run(lambda kg: _set_lock(kg, user, True))


@user_app.command("unlock")
def user_unlock(user: str) -> None:
    """Unlock a user."""
    _run(lambda kg: _set_lock(kg, user, False))


async def _set_lock(kg: Keygate, who: str, locked: bool) -> None:
    u = await _user(kg, who)
    await kg.users.set_locked(_operator(), u.user_id, locked, reason="cli")
    typer.echo(f"{u.username} {'locked' if locked else 'unlocked'}")


@user_app.command("passwd")
def user_passwd(
    user: str,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin")] = False,
) -> None:
    """Set a user's password (ends their sessions)."""
    password = _read_password(prompt=True, stdin=password_stdin)

    async def work(kg: Keygate) -> None:
        u = await _user(kg, user)
        await kg.users.set_password(_operator(), u.user_id, password)
        typer.echo(f"password set for {u.username}")

    _run(work)


@user_app.command("totp-enroll")
def user_totp_enroll(
    user: str,
    code: Annotated[str | None, typer.Option(help="Confirm at once with this current code")] = None,
) -> None:
    """Start TOTP enrolment: prints the secret and otpauth URI; confirm with a code to enable."""

    async def work(kg: Keygate) -> None:
        u = await _user(kg, user)
        secret, uri = await kg.users.begin_totp(_operator(), u.user_id)
        typer.echo(f"secret: {secret}\nuri: {uri}")
        entered = code or typer.prompt("Current 6-digit code from the authenticator app")
        await kg.users.confirm_totp(_operator(), u.user_id, entered)
        typer.echo("two-factor sign-in enabled")

    _run(work)


@key_app.command("create")
def key_create(
    user: Annotated[str, typer.Option("--user", help="Username or UserId of the owner")],
    permission: Annotated[list[str] | None, typer.Option("--permission", "-p", help="Trading, Withdraw or Deposit (repeat)")] = None,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="Allowed address or CIDR range (repeat); none: any IP")] = None,
    label: Annotated[str, typer.Option(help="A label to tell keys apart")] = "",
    replay_mode: Annotated[str | None, typer.Option("--replay-mode", help="window, compatible, increasing or unique [KEYGATE_DEFAULT_REPLAY_MODE]")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="Expiry as ISO 8601, e.g. 2027-01-31T00:00:00Z")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the credentials as JSON (the console's Export to JSON)")] = False,
    key_type: Annotated[str, typer.Option("--type", help="hmac (a secret, shown once) or ed25519 (give --public-key)")] = "hmac",
    public_key: Annotated[str | None, typer.Option("--public-key", help="ed25519: the file holding the public key ('-': stdin)")] = None,
    require_v2: Annotated[bool | None, typer.Option("--require-v2/--allow-apex",
                                                    help="Accept Signature v2 (RFC 9421) only, or APEX signatures too "
                                                         "[KEYGATE_REQUIRE_SIGNATURE_V2_FOR_NEW_KEYS]")] = None,
) -> None:
    """Create an API key. An hmac key's secret is printed this once and can never be shown again; an
    ed25519 key takes the holder's public key (``keygate keypair`` makes a pair) and has no secret."""
    from keygate.domain.key_material import fingerprint, parse_key_type

    async def work(kg: Keygate) -> None:
        kind = parse_key_type(key_type)
        raw_public = _read_public_key(public_key) if public_key is not None else None
        u = await _user(kg, user)
        created = await kg.keys.create(
            _operator(), u.user_id, parse_permissions(permission or []), IpAllowlist.parse(ip or []), label,
            replay_mode=parse_replay_mode(replay_mode) if replay_mode else None, expires_at=parse_expiry(expires),
            key_type=kind, public_key=raw_public, requires_v2=require_v2,
        )
        if as_json:
            typer.echo(json.dumps(created.reveal(), indent=2))
            return
        k = created.key
        credential = (f"API SECRET: {created.secret}" if created.secret is not None
                      else f"KEY TYPE:   ed25519 (public key {fingerprint(k.public_key) if k.public_key else '?'})")
        typer.echo(f"API KEY:    {k.api_key}\n{credential}\nNONCE:      {k.nonce}\nUSER ID:    {k.user_id}\n"
                   f"PERMISSIONS: {', '.join(format_permissions(k.permissions)) or 'read only'}\n"
                   f"IP ALLOWLIST: {', '.join(k.ip_allowlist.as_strings()) or 'any IP'}\n"
                   f"REPLAY MODE: {k.replay_mode.value}\n"
                   f"EXPIRES:    {k.expires_at.isoformat() if k.expires_at else 'never'}\n"
                   f"SIGNATURES: {'v2 (RFC 9421) only' if k.requires_v2 else 'APEX and v2 (RFC 9421)'}\n"
                   + ("Store the secret now: it is shown only once." if created.secret is not None
                      else "Sign with the private key (keygate sign --private-key FILE); keygate holds only the public key."))

    _run(work)


def _read_public_key(source: str) -> bytes:
    """The raw 32 bytes of the Ed25519 public key in ``source`` (a file, or ``-`` for stdin)."""
    from keygate.domain.key_material import parse_public_key

    try:
        if source == "-":
            data: bytes = sys.stdin.buffer.read()
        else:
            data = Path(source).read_bytes()
    except OSError as exc:
        raise KeygateError(f"cannot read the public key file {source}: {exc.strerror or exc}") from None
    return parse_public_key(data)


@app.command("keypair")
def keypair(
    out: Annotated[Path | None, typer.Option("--out", help="Write the private key to this file (mode 600) and the "
                                                          "public key to FILE.pub, instead of printing both")] = None,
) -> None:
    """Make a new Ed25519 key pair: the private key (PKCS#8 PEM) for the client, the public key for
    ``keygate key create --type ed25519 --public-key``. Nothing is stored by keygate."""
    from keygate.domain.key_material import decode_stored_public_key, fingerprint, public_key_pem
    from keygate.sdk.ed25519 import generate_pem

    private_pem, public_b64 = generate_pem()
    raw = decode_stored_public_key(public_b64)
    public_pem = public_key_pem(raw)
    if out is None:
        typer.echo(private_pem + public_pem + f"public key (raw, base64): {public_b64}\nfingerprint: {fingerprint(raw)}")
        return
    if out.exists():
        _refuse(f"{out} exists already: keygate keypair never overwrites a key")
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private_pem)
    public_path = out.with_name(out.name + ".pub")
    public_path.write_text(public_pem)
    typer.echo(f"private key: {out} (keep it secret)\npublic key:  {public_path}\n"
               f"public key (raw, base64): {public_b64}\nfingerprint: {fingerprint(raw)}")


@key_app.command("list")
def key_list(
    user: Annotated[str | None, typer.Option("--user", help="Username or UserId: that user's keys only")] = None,
    search: Annotated[str, typer.Option("--search", "-s", help=_SEARCH_HELP + ", or of an API key")] = "",
    page: Annotated[int, typer.Option("--page", help=_PAGE_HELP)] = 1,
    limit: Annotated[int, typer.Option("--limit", help=_LIMIT_HELP)] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List API keys (never the secret), a page at a time: a user's, or every user's (the owner's id first)."""

    async def work(kg: Keygate) -> None:
        owner = (await _user(kg, user)).user_id if user is not None else None
        found = await kg.keys.page(_operator(), search, page, limit, user_id=owner)
        if as_json:
            typer.echo(json.dumps([k.public_view() for k in found.items], indent=2))
            _more(found, page)
            return
        for k in found.items:
            used = f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "never"
            perms = ",".join(format_permissions(k.permissions)) or "read-only"
            ips = ",".join(k.ip_allowlist.as_strings()) or "any IP"
            line = f"{k.api_key}\t{k.label or '-'}\t{perms}\t{ips}\tcreated {k.created_at:%Y-%m-%d %H:%M}\tlast used {used}\t{k.key_type.value}"
            typer.echo(line if owner is not None else f"{k.user_id}\t{line}")
        _more(found, page)

    _run(work)


session_app = typer.Typer(help="See live sessions.", no_args_is_help=True)
app.add_typer(session_app, name="session")


@session_app.command("list")
def session_list(
    user: Annotated[str | None, typer.Option("--user", help="Username or UserId: that user's sessions only")] = None,
    search: Annotated[str, typer.Option("--search", "-s", help=_SEARCH_HELP)] = "",
    page: Annotated[int, typer.Option("--page", help=_PAGE_HELP)] = 1,
    limit: Annotated[int, typer.Option("--limit", help=_LIMIT_HELP)] = 50,
) -> None:
    """List live sessions (never a token), a page at a time: user id, username, kind, API key, IP, started, last seen."""

    async def work(kg: Keygate) -> None:
        owner = (await _user(kg, user)).user_id if user is not None else None
        found = await kg.sessions.page(_operator(), search, page, limit, user_id=owner)
        names = await kg.users.names(_operator(), {s.user_id for s in found.items})
        for s in found.items:
            typer.echo(f"{s.user_id}\t{names.get(s.user_id, '-')}\t{s.kind.value}\t{s.api_key or '-'}\t"
                       f"{s.client_ip or '-'}\tstarted {s.created_at:%Y-%m-%d %H:%M}\tlast seen {s.last_seen_at:%Y-%m-%d %H:%M}")
        _more(found, page)

    _run(work)


@key_app.command("edit")
def key_edit(
    api_key: str,
    permission: Annotated[list[str] | None, typer.Option("--permission", "-p", help="Replace permissions (repeat)")] = None,
    no_permissions: Annotated[bool, typer.Option("--read-only", help="Remove every permission")] = False,
    ip: Annotated[list[str] | None, typer.Option("--ip", help="Replace the allowlist (repeat)")] = None,
    any_ip: Annotated[bool, typer.Option("--any-ip", help="Clear the allowlist")] = False,
    label: Annotated[str | None, typer.Option(help="New label")] = None,
    replay_mode: Annotated[str | None, typer.Option("--replay-mode", help="window, compatible, increasing or unique")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="New expiry (ISO 8601)")] = None,
    no_expiry: Annotated[bool, typer.Option("--no-expiry", help="Remove the expiry")] = False,
    require_v2: Annotated[bool | None, typer.Option("--require-v2/--allow-apex",
                                                    help="Accept Signature v2 (RFC 9421) only, or APEX signatures too")] = None,
) -> None:
    """Edit a key's permissions, allowlist, label, replay mode, expiry or signature scheme. Live sessions get the new rights at once."""

    async def work(kg: Keygate) -> None:
        owner = await _key_owner(kg, api_key)
        perms = frozenset() if no_permissions else (parse_permissions(permission) if permission else None)
        allow = IpAllowlist() if any_ip else (IpAllowlist.parse(ip) if ip else None)
        expiry: datetime | None | bool = None if no_expiry else (parse_expiry(expires) if expires else False)
        k = await kg.keys.update(
            _operator(), owner, api_key, permissions=perms, ip_allowlist=allow, label=label,
            replay_mode=parse_replay_mode(replay_mode) if replay_mode else None, expires_at=expiry,
            requires_v2=require_v2,
        )
        typer.echo(f"updated {k.api_key}: permissions {', '.join(format_permissions(k.permissions)) or 'read only'}; "
                   f"IPs {', '.join(k.ip_allowlist.as_strings()) or 'any'}; label {k.label!r}; "
                   f"signatures {'v2 only' if k.requires_v2 else 'APEX and v2'}; "
                   "live sessions and signed requests have the new rights on every server within a second")

    _run(work)


@key_app.command("delete")
def key_delete(api_key: str) -> None:
    """Delete a key; it stops working at once."""

    async def work(kg: Keygate) -> None:
        owner = await _key_owner(kg, api_key)
        await kg.keys.delete(_operator(), owner, api_key)
        typer.echo(f"deleted {api_key}")

    _run(work)


@key_app.command("rotate")
def key_rotate(
    api_key: str,
    grace: Annotated[int, typer.Option("--grace", help="Seconds the old secret keeps working (0: stops at once)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the new credentials as JSON")] = False,
    public_key: Annotated[str | None, typer.Option("--public-key", help="ed25519 keys: the file holding the new public key ('-': stdin)")] = None,
) -> None:
    """Issue a new secret and nonce for a key, printed this once (an ed25519 key: take its new public key)."""
    async def work(kg: Keygate) -> None:
        raw_public = _read_public_key(public_key) if public_key is not None else None
        owner = await _key_owner(kg, api_key)
        created = await kg.keys.rotate_secret(_operator(), owner, api_key, grace, public_key=raw_public)
        if as_json or created.secret is None:
            typer.echo(json.dumps(created.reveal(), indent=2))
            return
        typer.echo(f"API KEY:    {api_key}\nAPI SECRET: {created.secret}\nNONCE:      {created.key.nonce}\n"
                   + (f"The old secret works until {created.key.previous_secret_expires_at:%Y-%m-%d %H:%M:%S} UTC.\n" if grace else "The old secret no longer works.\n")
                   + "Store the secret now: it is shown only once.")

    _run(work)


@app.command("rotate-master-key")
def rotate_master_key() -> None:
    """Re-seal every secret under a new master key, while servers keep serving."""

    async def work(kg: Keygate) -> None:
        try:
            count = await kg.rotate_master_key()
        except RuntimeError as exc:
            raise KeygateError(str(exc)) from None
        if kg.settings.master_key:
            typer.echo(f"{count} sealed secrets re-encrypted under KEYGATE_MASTER_KEY; "
                       "the old keys may now leave KEYGATE_PREVIOUS_MASTER_KEYS.")
        else:
            typer.echo(f"master key rotated; {count} sealed secrets re-encrypted. "
                       f"Back up {kg.settings.resolved_master_key_file} now.")

    _run(work)


@app.command()
def audit(
    action: Annotated[str | None, typer.Option(help="e.g. auth.key, auth.password, key.create, user.lockout")] = None,
    outcome: Annotated[str | None, typer.Option(help="success, failure, locked, pending-2fa")] = None,
    user: Annotated[str | None, typer.Option(help="Username or UserId")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="An API key")] = None,
    since: Annotated[str | None, typer.Option(help="ISO 8601 date-time")] = None,
    until: Annotated[str | None, typer.Option(help="ISO 8601 date-time")] = None,
    limit: Annotated[int, typer.Option(help="At most this many events, newest first")] = 100,
) -> None:
    """Print audit events as JSON lines (one object a line), for reading or export."""

    async def work(kg: Keygate) -> None:
        user_id = (await _user(kg, user)).user_id if user else None
        events = await kg.audit.query(_operator(), action=action, outcome=outcome, user_id=user_id, api_key=api_key,
                                      since=parse_expiry(since), until=parse_expiry(until), limit=limit)
        for event in events:
            typer.echo(json.dumps(event.as_dict(), separators=(",", ":")))

    _run(work)


def main() -> None:
    try:
        app()
    except InvalidSetting as exc:
        for line in exc.lines:
            typer.secho(f"error: {line}", fg=typer.colors.RED, err=True)
        sys.exit(2)
