"""The self-service site's pages: plain HTML forms, no JavaScript, one stylesheet.

Everything user-supplied is escaped here; the Content-Security-Policy of the
site forbids inline scripts and styles, so the markup carries neither.
"""

from __future__ import annotations

import html
from typing import Any

E = html.escape


def layout(title: str, content: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{E(title)} · Mail account</title><link rel="stylesheet" href="/style.css">'
        f"</head><body><main><h1>{E(title)}</h1>{content}</main></body></html>\n"
    )


def _flash(messages: list[tuple[str, str]]) -> str:
    return "".join(
        f'<p class="{kind}" id="{"error" if kind == "error" else "notice"}">{E(text)}</p>'
        for kind, text in messages
    )


def login_page(csrf: str, cert_user: str | None, error: str | None) -> str:
    parts = [_flash([("error", error)]) if error else ""]
    if cert_user:
        parts.append(
            '<form id="cert-login" method="post" action="/login/certificate">'
            f'<input type="hidden" name="csrf" value="{E(csrf)}">'
            f"<p>Your browser presented the certificate of <strong>{E(cert_user)}</strong>.</p>"
            '<button id="cert-login-submit" type="submit">Sign in with the certificate</button>'
            '</form><p class="or">or with your password:</p>'
        )
    parts.append(
        '<form id="login" method="post" action="/login">'
        f'<input type="hidden" name="csrf" value="{E(csrf)}">'
        '<label for="email">Email address</label>'
        '<input id="email" name="email" type="email" autocomplete="username" required autofocus>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" '
        'autocomplete="current-password" required>'
        '<button id="login-submit" type="submit">Sign in</button></form>'
    )
    return layout("Sign in", "".join(parts))


def _password_form(csrf: str, needs_current: bool) -> str:
    """The current password is asked for unless a certificate alone signs the user in."""
    current = (
        '<label for="current_password">Current password</label>'
        '<input id="current_password" name="current_password" type="password" '
        'autocomplete="current-password" required>'
        if needs_current
        else ""
    )
    return (
        '<form id="password-form" method="post" action="/password">'
        f'<input type="hidden" name="csrf" value="{E(csrf)}">'
        + current
        + '<label for="new_password">New password</label>'
        '<input id="new_password" name="new_password" type="password" '
        'autocomplete="new-password" required>'
        '<label for="new_password_again">New password again</label>'
        '<input id="new_password_again" name="new_password_again" type="password" '
        'autocomplete="new-password" required>'
        '<button id="password-submit" type="submit">Change password</button></form>'
    )


def _when(value: str | None) -> str:
    """`2026-11-29 03:31 UTC`: minutes are enough to recognise a device's last use."""
    return E(value.replace("T", " ")[:16] + " UTC") if value else "never"


def account_page(
    account: dict[str, Any],
    csrf: str,
    expired: bool,
    flash: list[tuple[str, str]],
    secret: tuple[int, str, str] | None,
) -> str:
    user = account["user"]
    # A certificate sign-in stands for the current password (see `site._check_current`).
    needs_current = account["signed_in_with"] != "certificate"
    head = (
        f'<p class="who">Signed in as <span id="user">{E(user)}</span></p>'
        f'<form id="logout" method="post" action="/logout">'
        f'<input type="hidden" name="csrf" value="{E(csrf)}">'
        '<button id="logout-submit" type="submit" class="secondary">Sign out</button></form>'
        + _flash(flash)
    )
    if expired:
        return layout(
            "Your account",
            head + '<p class="error" id="expired">Your password has expired. Choose a new one: '
            "until then it sends no mail.</p>"
            + "<section><h2>Change password</h2>"
            + _password_form(csrf, needs_current)
            + "</section>",
        )
    rows = "".join(
        f'<tr data-id="{a["id"]}"><td>{E(a["label"])}</td>'
        f'<td class="when">{_when(a["created_at"])}</td>'
        f'<td class="when">{_when(a["last_used_at"])}</td><td>'
        f'<form method="post" action="/app-passwords/{a["id"]}/revoke">'
        f'<input type="hidden" name="csrf" value="{E(csrf)}">'
        f'<button class="revoke" type="submit">Revoke</button></form></td></tr>'
        for a in account["app_passwords"]
    )
    shown = ""
    if secret is not None:
        _app_id, label, password = secret
        shown = (
            f'<div class="secret"><p>App password for <strong>{E(label)}</strong>. '
            "Copy it into the program now: it is shown only this once.</p>"
            f'<code id="new-app-password">{E(password)}</code></div>'
        )
    apps = (
        "<section><h2>App passwords</h2>"
        "<p>One per device or program, so each can be revoked alone. They send mail "
        "only; they cannot sign in here.</p>"
        + shown
        + '<table id="app-passwords"><thead><tr><th>Label</th><th>Created</th>'
        "<th>Last used</th><th></th></tr></thead><tbody>"
        + (rows or '<tr class="empty"><td colspan="4">None yet</td></tr>')
        + "</tbody></table>"
        '<form id="app-password-form" method="post" action="/app-passwords">'
        f'<input type="hidden" name="csrf" value="{E(csrf)}">'
        '<label for="label">Label</label>'
        '<input id="label" name="label" type="text" maxlength="100" '
        'placeholder="Thunderbird laptop" required>'
        '<button id="app-password-submit" type="submit">Create app password</button></form>'
        "</section>"
    )
    cert_rows = "".join(
        f'<tr data-serial="{E(c["serial"])}"><td><code>{E(c["serial"])}</code></td>'
        f"<td>{_when(c['not_after'])}</td>"
        f"<td>{'revoked' if c['revoked_at'] else 'valid'}</td></tr>"
        for c in account["certificates"]
    )
    certs = (
        "<section><h2>Certificates</h2>"
        '<table id="certificates"><thead><tr><th>Serial</th><th>Expires</th><th>State</th>'
        "</tr></thead><tbody>"
        + (cert_rows or '<tr class="empty"><td colspan="3">None</td></tr>')
        + "</tbody></table></section>"
    )
    changed = _when(account["password_changed_at"])
    expires = account["password_expires_at"]
    age = f"Last changed {changed}" + (f"; expires {_when(expires)}." if expires else ".")
    password = (
        f'<section><h2>Change password</h2><p class="hint">{age}</p>'
        + _password_form(csrf, needs_current)
        + "</section>"
    )
    return layout("Your account", head + password + apps + certs)


STYLE = """\
* { box-sizing: border-box; }
body { margin: 0; background: #f3f4f6; color: #1f2937;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; }
main { max-width: 46rem; margin: 2rem auto; padding: 2rem; background: #fff;
  border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.12); }
h1 { margin-top: 0; font-size: 1.6rem; }
h2 { font-size: 1.15rem; margin-top: 2rem; border-bottom: 1px solid #e5e7eb;
  padding-bottom: .3rem; }
label { display: block; margin: .8rem 0 .2rem; font-weight: 600; }
input[type=email], input[type=password], input[type=text] { width: 100%; padding: .5rem .6rem;
  border: 1px solid #9ca3af; border-radius: 4px; font-size: 1rem; }
button { margin-top: 1rem; padding: .5rem 1rem; border: 0; border-radius: 4px;
  background: #1d4ed8; color: #fff; font-size: 1rem; cursor: pointer; }
button.secondary, button.revoke { background: #e5e7eb; color: #111827; margin-top: 0; }
button.revoke { padding: .25rem .7rem; font-size: .9rem; }
table { width: 100%; border-collapse: collapse; margin: .5rem 0; }
th, td { text-align: left; padding: .4rem .5rem; border-bottom: 1px solid #e5e7eb; }
.error { background: #fee2e2; color: #991b1b; padding: .6rem .8rem; border-radius: 4px; }
.notice { background: #dcfce7; color: #166534; padding: .6rem .8rem; border-radius: 4px; }
.secret { background: #fef9c3; padding: .8rem; border-radius: 4px; margin: .8rem 0; }
.secret p { margin-top: 0; }
.secret code { display: block; font-size: 1.4rem; letter-spacing: .05em; user-select: all; }
.who { display: inline-block; margin: 0 1rem 0 0; }
#logout { display: inline-block; }
.hint, .or, .empty td { color: #6b7280; }
td.when { white-space: nowrap; }
@media (max-width: 600px) {
  main { margin: 0; padding: 1rem; border-radius: 0; box-shadow: none; }
  table { display: block; overflow-x: auto; }
}
"""
