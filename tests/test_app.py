"""The wiring place: an App binds what the config asks, reports real ports, and lets go."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import ssl
from pathlib import Path

import pytest

from submitgw import config as config_mod
from submitgw.app.gateway import App
from submitgw.config import Config, Endpoint
from submitgw.store import Database


@pytest.fixture
def setup(gateway_template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "setup"
    shutil.copytree(gateway_template, copy)
    return copy


def setup_config(setup: Path, **listen: Endpoint | None) -> Config:
    cfg = config_mod.load(setup / "submitgw.toml")
    any_port = Endpoint("127.0.0.1", 0)
    return cfg.replace(
        submission=dataclasses.replace(cfg.submission, listen=listen.get("submission", any_port)),
        submissions=dataclasses.replace(
            cfg.submissions, listen=listen.get("submissions", any_port)
        ),
        selfservice=dataclasses.replace(
            cfg.selfservice, listen=listen.get("selfservice", any_port)
        ),
    )


def greeting(port: int, context: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        if context is None:
            return raw.recv(512)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.recv(512)


def test_port_zero_becomes_a_real_port_for_every_listener(setup: Path) -> None:
    cfg = setup_config(setup)
    ca = ssl.create_default_context(cafile=str(setup / "ca" / "ca.crt"))

    async def main() -> None:
        db = Database(cfg.database.url)
        app = App(cfg, db)
        try:
            await app.start()
            ports = {name: endpoint.port for name, endpoint in app.bound.items()}
            assert set(ports) == {"submission", "submissions", "selfservice"}
            assert all(port > 0 for port in ports.values())
            loop = asyncio.get_running_loop()
            plain = await loop.run_in_executor(None, greeting, ports["submission"])
            implicit = await loop.run_in_executor(None, greeting, ports["submissions"], ca)
            assert plain.startswith(b"220 ") and implicit.startswith(b"220 ")
            # The password-expired reply names the site, so its URL has the real port.
            url = app.services.authenticator.selfservice_url
            assert url is not None and url.endswith(f":{ports['selfservice']}/")
        finally:
            await app.stop(0)
            db.dispose()
        for port in ports.values():
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()

    asyncio.run(main())


def test_a_listener_that_cannot_bind_leaves_nothing_bound(setup: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = Endpoint("127.0.0.1", taken.getsockname()[1])
        cfg = setup_config(setup, submissions=busy, selfservice=None)

        async def main() -> int:
            db = Database(cfg.database.url)
            app = App(cfg, db)
            try:
                with pytest.raises(OSError):
                    await app.start()
                first = app.bound["submission"].port
            finally:
                app.services.close()
                db.dispose()
            return first

        first = asyncio.run(main())
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", first), timeout=2).close()


def test_no_smtp_listener_is_refused(setup: Path) -> None:
    cfg = setup_config(setup, submission=None, submissions=None, selfservice=None)

    async def main() -> None:
        db = Database(cfg.database.url)
        app = App(cfg, db)
        try:
            with pytest.raises(ValueError, match="both listeners are off"):
                await app.start()
        finally:
            app.services.close()
            db.dispose()

    asyncio.run(main())
