"""A small HTTPS client for the self-service site: real TLS to the gateway, cookies kept.

Built on http.client so that every header the site sends (Set-Cookie flags,
caching, CSP) is visible to the tests exactly as it came over the wire.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import urllib.parse
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any

TIMEOUT = 30.0


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def set_cookies(self) -> list[str]:
        return self.headers.get_all("Set-Cookie") or []

    def hidden(self, name: str = "csrf") -> str:
        """The value of the first hidden form field called `name`."""
        found = re.search(rf'name="{name}" value="([^"]*)"', self.text)
        assert found, f"no hidden {name} field in:\n{self.text}"
        return found.group(1)


@dataclass
class WebClient:
    port: int
    context: ssl.SSLContext
    host: str = "127.0.0.1"
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str | None = None
    # A loopback address to connect from, so a test can be several clients.
    source: str | None = None

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        form: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        body = raw
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        elif form is not None:
            body = urllib.parse.urlencode(form).encode()
            sent.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if self.cookies:
            sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        connection = http.client.HTTPSConnection(
            self.host,
            self.port,
            context=self.context,
            timeout=TIMEOUT,
            source_address=(self.source, 0) if self.source else None,
        )
        try:
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            reply = Reply(response.status, response.headers, response.read())
        finally:
            connection.close()
        for line in reply.set_cookies():
            cookie = SimpleCookie()
            cookie.load(line)
            for name, morsel in cookie.items():
                if morsel["max-age"] == "0" or not morsel.value:
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return reply

    # --- JSON API shortcuts -------------------------------------------------------------

    def login(self, email: str, password: str) -> Reply:
        reply = self.request(
            "POST", "/api/session", json_body={"email": email, "password": password}
        )
        if reply.status == 200:
            self.csrf = reply.json()["csrf_token"]
        return reply

    def call(self, method: str, path: str, body: Any = None, *, csrf: bool = True) -> Reply:
        headers = {"X-CSRF-Token": self.csrf} if csrf and self.csrf else {}
        return self.request(method, path, json_body=body, headers=headers)
