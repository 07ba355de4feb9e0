"""The profile page with its API Keys section: create (secret shown once), edit, delete."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from keygate.console.charts import usage_chart
from keygate.console.forms import KeyForm
from keygate.console.security import FORM_ID_FIELD, FormOnce
from keygate.console.web import PageError, Signed, checked_form, keygate, redirect, render, require_user
from keygate.domain.errors import Conflict, InvalidRequest, NotFound
from keygate.domain.keys import ApiKey
from keygate.domain.permissions import Permission, format_permissions

PERMISSIONS = [p.value for p in Permission]
PERMISSION_HELP = {
    "Trading": "place and cancel orders",
    "Withdraw": "move funds out of the account",
    "Deposit": "see deposit addresses and deposit funds",
}
NOTICES = {
    "deleted": "The API key was deleted. It and every session made with it stopped working.",
    "closed": "Your new API key is in the list below. Its secret will not be shown again.",
    "totp-on": "Two-factor sign-in is on. From now on you sign in with your password and a code.",
    "totp-off": "Two-factor sign-in is off.",
}
SAVED = {
    "yes": "Saved. Apps already signed in with this key have the new permissions and IP allowlist from now on, on "
           "every server; the key and its secret stay the same.",
}
DUPLICATE = PageError(
    409, "Already submitted",
    "This form was already submitted once and was not processed again. If you were creating an API key, it was "
    "created by the first submission, and its secret was shown then and cannot be shown again: find the key on "
    "your profile, and delete it if you did not store the secret.",
)


def form_once(request: Request) -> FormOnce:
    return request.app.state.form_once  # type: ignore[no-any-return]


async def _keys(request: Request, signed: Signed) -> list[ApiKey]:
    keys = await keygate(request).keys.list(signed.principal, signed.principal.user_id)
    return sorted(keys, key=lambda k: k.created_at, reverse=True)


async def _own_key(request: Request, signed: Signed, api_key: str) -> ApiKey:
    for key in await _keys(request, signed):
        if key.api_key == api_key:
            return key
    raise PageError(404, "API key not found", "There is no such API key on your account. It may have been deleted already.")


async def profile(request: Request, signed: Signed | None = None, created: object = None, status: int = 200) -> Response:
    signed = signed or await require_user(request)
    keys = await _keys(request, signed)
    return render(
        request, "profile.html", signed, status=status, keys=keys, created=created,
        notice=NOTICES.get(request.query_params.get("done", ""), ""), format_permissions=format_permissions,
        usage=await keygate(request).keys.usage_of(signed.principal, keys, hours=24), usage_chart=usage_chart,
    )


async def render_usage(request: Request, signed: Signed, api_key: str, back: str) -> Response:
    """The usage page of one key (the owner's, or any key's for an administrator)."""
    try:
        usage = await keygate(request).keys.usage(signed.principal, api_key)
    except NotFound:
        raise PageError(404, "API key not found", "There is no such API key. It may have been deleted.") from None
    return render(request, "key_usage.html", signed, usage=usage, day=usage.last(24), week=usage.hours,
                  usage_chart=usage_chart, back=back)


async def key_usage(request: Request) -> Response:
    signed = await require_user(request)
    key = await _own_key(request, signed, request.path_params["api_key"])
    return await render_usage(request, signed, key.api_key, "/")


def _key_form(request: Request, signed: Signed, kf: KeyForm, status: int = 200, key: ApiKey | None = None,
              saved: str = "") -> Response:
    return render(request, "key_form.html", signed, status=status, form=kf, key=key, saved=saved,
                  permissions=PERMISSIONS, permission_help=PERMISSION_HELP, form_id=FormOnce.new_id(),
                  replay_modes=REPLAY_MODES, default_replay_mode=keygate(request).keys.policy.default_replay_mode.value,
                  default_requires_v2=keygate(request).keys.policy.require_v2_for_new_keys)


REPLAY_MODES = {
    "window": "Window: any fresh nonce, each accepted once (timestamps in any order, random numbers, counters; recommended)",
    "increasing": "Increasing: each nonce must be a larger number than the last (millisecond timestamps; ccxt, the keygate SDK)",
    "unique": "Unique: each nonce may be used once (clients that send random nonces)",
    "compatible": "Compatible: any nonce, as APEX accepts (needed to reuse the nonce shown at creation every time; weakest)",
}


async def new_key(request: Request) -> Response:
    signed = await require_user(request)
    return _key_form(request, signed, KeyForm.blank())


async def create_key(request: Request) -> Response:
    signed = await require_user(request)
    form = await checked_form(request, signed)
    kf = KeyForm.read(form).read_key_type(form)
    if not kf.valid:
        return _key_form(request, signed, kf, 400)
    if not form_once(request).claim(signed.token, form.get(FORM_ID_FIELD)):
        raise DUPLICATE
    principal = signed.principal
    try:
        created = await keygate(request).keys.create(
            principal, principal.user_id, kf.parsed_permissions, kf.parsed_allowlist, kf.label,
            replay_mode=kf.parsed_replay_mode, expires_at=kf.parsed_expiry,
            key_type=kf.parsed_key_type, public_key=kf.parsed_public_key, requires_v2=kf.parsed_requires_v2)
    except (InvalidRequest, Conflict) as exc:
        kf.refused(exc.message)
        return _key_form(request, signed, kf, exc.http_status)
    credentials: dict[str, object] = {
        "APIKey": created.key.api_key,
        "KeyType": created.key.key_type.value,
        "Nonce": created.key.nonce,
        "UserId": created.key.user_id,
        "Label": created.key.label,
        "Permissions": format_permissions(created.key.permissions),
        "IpAllowlist": created.key.ip_allowlist.as_strings(),
        "ReplayMode": created.key.replay_mode.value,
        "RequiresSignatureV2": created.key.requires_v2,
        "ExpiresAt": created.key.expires_at.isoformat() if created.key.expires_at else None,
        "CreatedAt": created.key.created_at.isoformat(),
    }
    if created.secret is not None:
        credentials["APISecret"] = created.secret
    else:
        credentials["PublicKeyFingerprint"] = created.key.public_view()["PublicKeyFingerprint"]
    response = await profile(request, signed, created=credentials, status=201)
    response.headers["cache-control"] = "no-store"
    return response


async def edit_key(request: Request) -> Response:
    signed = await require_user(request)
    key = await _own_key(request, signed, request.path_params["api_key"])
    return _key_form(request, signed, KeyForm.of_key(key.label, key.permissions, key.ip_allowlist, key.replay_mode, key.expires_at,
                                                      key.requires_v2), key=key,
                     saved=SAVED.get(request.query_params.get("saved", ""), ""))


async def update_key(request: Request) -> Response:
    signed = await require_user(request)
    form = await checked_form(request, signed)
    key = await _own_key(request, signed, request.path_params["api_key"])
    kf = KeyForm.read(form)
    if not kf.valid:
        return _key_form(request, signed, kf, 400, key=key)
    try:
        await keygate(request).keys.update(
            signed.principal, signed.principal.user_id, key.api_key,
            permissions=kf.parsed_permissions, ip_allowlist=kf.parsed_allowlist, label=kf.label,
            replay_mode=kf.parsed_replay_mode, expires_at=kf.parsed_expiry, requires_v2=kf.parsed_requires_v2)
    except InvalidRequest as exc:
        kf.refused(exc.message)
        return _key_form(request, signed, kf, 400, key=key)
    return redirect(request, f"/keys/{key.api_key}/edit?saved=yes")


async def confirm_delete(request: Request) -> Response:
    signed = await require_user(request)
    key = await _own_key(request, signed, request.path_params["api_key"])
    return render(request, "key_delete.html", signed, key=key, format_permissions=format_permissions)


async def delete_key(request: Request) -> Response:
    signed = await require_user(request)
    await checked_form(request, signed)
    api_key = request.path_params["api_key"]
    try:
        await keygate(request).keys.delete(signed.principal, signed.principal.user_id, api_key)
    except NotFound:
        raise PageError(404, "API key not found",
                        "There is no such API key on your account: it was deleted already.") from None
    return redirect(request, "/?done=deleted")


async def closed_dialog(request: Request) -> Response:
    """Where the credentials dialog's Close goes; the checkbox is required by the form itself."""
    await require_user(request)
    if request.query_params.get("stored") != "yes":
        return redirect(request, "/")
    return redirect(request, "/?done=closed")


ROUTES = [
    Route("/", profile, methods=["GET"]),
    Route("/keys/new", new_key, methods=["GET"]),
    Route("/keys", create_key, methods=["POST"]),
    Route("/keys/closed", closed_dialog, methods=["GET"]),
    Route("/keys/{api_key}/edit", edit_key, methods=["GET"]),
    Route("/keys/{api_key}/edit", update_key, methods=["POST"]),
    Route("/keys/{api_key}/usage", key_usage, methods=["GET"]),
    Route("/keys/{api_key}/delete", confirm_delete, methods=["GET"]),
    Route("/keys/{api_key}/delete", delete_key, methods=["POST"]),
]
