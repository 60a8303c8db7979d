"""The command line, run as an admin runs it: a real process in a real setup folder.

Rules proven here: `init` makes a complete, movable folder and never overwrites
one; commands find their configuration the documented way; passwords come
from a terminal or stdin only; every error is one line, never a traceback;
nothing serves a database whose schema is behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from datetime import datetime
from ipaddress import ip_address
from pathlib import Path

import argon2
import pytest
from cryptography import x509

from submitgw import config as config_mod
from submitgw.store import Database, UserRecord, UserStore
from tests.support import cli
from tests.support.smarthost import free_port

FILES = [
    "submitgw.toml",
    "submitgw.db",
    "ca/ca.crt",
    "ca/ca.key",
    "tls/server.crt",
    "tls/server.key",
]
# Cheap argon2 so that each `user add` takes milliseconds, not a tenth of a second.
CHEAP_AUTH = {
    "argon2_time_cost = 3": "argon2_time_cost = 1",
    "argon2_memory_kib = 65536": "argon2_memory_kib = 8192",
    "argon2_parallelism = 4": "argon2_parallelism = 1",
}
# Passes the [passwords] policy for every address these tests use.
GOOD_PASSWORD = "tawny owl at dusk"


def submitgw(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    input: str | None = None,
    process: bool = False,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI with a clean environment: no inherited SUBMITGW_CONFIG, no terminal.

    In this process by default; `process=True` runs the console script itself.
    """
    if process:
        return cli.run_process(*args, cwd=cwd, env=env, input=input, timeout=timeout)
    return cli.run(*args, cwd=cwd, env=env, input=input)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """A failed command: non-zero exit, exactly one line on stderr, no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def edit(path: Path, replacements: dict[str, str]) -> None:
    text = path.read_text(encoding="utf-8")
    for old, new in replacements.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text, encoding="utf-8")


def snapshot(folder: Path) -> dict[str, tuple[str, int, float]]:
    """Content hash, mode and mtime of every file below `folder`."""
    result = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            info = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            result[str(path.relative_to(folder))] = (digest, info.st_mode, info.st_mtime)
    return result


def store_for(config: Path) -> tuple[Database, UserStore]:
    db = Database(config_mod.load(config).database.url)
    return db, UserStore(db)


def user_record(config: Path, email: str) -> UserRecord | None:
    db, users = store_for(config)
    try:
        return users.get(email)
    finally:
        db.dispose()


def password_matches(config: Path, email: str, password: str) -> bool:
    record = user_record(config, email)
    assert record is not None
    try:
        return argon2.PasswordHasher().verify(record.password_hash, password)
    except argon2.exceptions.VerifyMismatchError:
        return False


@pytest.fixture(scope="session")
def template_setup(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `init` per run; tests get copies, which is what makes moving a folder safe."""
    folder = tmp_path_factory.mktemp("template") / "gw"
    ok(submitgw("init", "--dir", str(folder), "--hostname", "gw.test"))
    edit(folder / "submitgw.toml", CHEAP_AUTH)
    return folder


@pytest.fixture
def setup(template_setup: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "gw"
    shutil.copytree(template_setup, folder)
    return folder


@pytest.fixture
def config(setup: Path) -> Path:
    return setup / "submitgw.toml"


def add_user(
    config: Path, email: str, password: str = GOOD_PASSWORD, *, auth: str | None = None
) -> subprocess.CompletedProcess[str]:
    flags = ["--auth", auth] if auth else []
    return submitgw(
        "--config",
        str(config),
        "user",
        "add",
        email,
        "--password-stdin",
        *flags,
        input=password + "\n",
    )


def list_json(config: Path) -> list[dict[str, object]]:
    return json.loads(ok(submitgw("--config", str(config), "user", "list", "--json")))


# --- init ----------------------------------------------------------------------------------


def test_init_creates_every_file_and_prints_every_path(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "gw"

    out = ok(submitgw("init", "--dir", str(folder), "--hostname", "gw.test"))

    for rel in FILES:
        assert (folder / rel).is_file(), rel
        assert str(folder / rel) in out, rel
    assert f"CA certificate (give it to mail clients): {folder / 'ca/ca.crt'}" in out
    for key in ("ca/ca.key", "tls/server.key"):
        assert stat.S_IMODE((folder / key).stat().st_mode) == 0o600, key
    assert stat.S_IMODE((folder / "ca").stat().st_mode) == 0o700


@pytest.mark.parametrize("on_path", [True, False])
def test_init_names_the_full_path_of_submitgw_when_path_lacks_it(
    tmp_path: Path, on_path: bool
) -> None:
    script = Path(sys.executable).parent / "submitgw"
    if not script.is_file():
        pytest.skip(f"no console script {script} (scripts/test.sh installs one)")
    folders = [str(script.parent)] if on_path else []
    env = {
        "PATH": os.pathsep.join([*folders, "/usr/bin", "/bin"]),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    target = tmp_path / "gw"

    result = subprocess.run(
        [str(script), "init", "--dir", str(target), "--hostname", "gw.test"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    hint = ok(result).splitlines()[-1]
    program = "submitgw" if on_path else str(script)
    assert hint == f"Next: {program} --config {target / 'submitgw.toml'} user add you@example.org"


def test_init_result_is_ready_to_use(setup: Path) -> None:
    """The config loads, names the files init wrote, and the database is migrated."""
    cfg = config_mod.load(setup / "submitgw.toml")

    assert cfg.server.hostname == "gw.test"
    assert cfg.tls.cert == setup.resolve() / "tls/server.crt"
    assert cfg.tls.ca_cert == setup.resolve() / "ca/ca.crt"
    db = Database(cfg.database.url)
    try:
        db.check_current()
    finally:
        db.dispose()
    assert cfg.database.url == f"sqlite:///{setup.resolve() / 'submitgw.db'}"


def test_init_keeps_config_and_database_private(setup: Path) -> None:
    """The database holds password hashes; the config may hold a database password."""
    for name in ("submitgw.toml", "submitgw.db"):
        assert (setup / name).stat().st_mode & 0o777 == 0o600, name


def test_server_certificate_names_the_host_localhost_and_loopback(setup: Path) -> None:
    cert = x509.load_pem_x509_certificate((setup / "tls/server.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((setup / "ca/ca.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value

    assert set(san.get_values_for_type(x509.DNSName)) == {"gw.test", "localhost"}
    assert san.get_values_for_type(x509.IPAddress) == [ip_address("127.0.0.1")]
    cert.verify_directly_issued_by(ca)


def test_second_init_refuses_and_changes_nothing(setup: Path) -> None:
    before = snapshot(setup)

    line = one_line_error(submitgw("init", "--dir", str(setup), "--hostname", "other.test"))

    assert "refusing" in line
    assert "overwrite" in line
    assert snapshot(setup) == before


def test_init_refuses_when_any_one_file_is_present(tmp_path: Path) -> None:
    folder = tmp_path / "gw"
    (folder / "tls").mkdir(parents=True)
    (folder / "tls/server.key").write_text("precious\n")

    line = one_line_error(submitgw("init", "--dir", str(folder), "--hostname", "gw.test"))

    assert "refusing" in line
    assert (folder / "tls/server.key").read_text() == "precious\n"
    assert not (folder / "submitgw.toml").exists()


def test_init_into_an_existing_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "empty"
    folder.mkdir()

    ok(submitgw("init", "--dir", str(folder), "--hostname", "gw.test"))

    assert all((folder / rel).is_file() for rel in FILES)


def test_init_onto_a_file_is_an_error(tmp_path: Path) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")

    line = one_line_error(submitgw("init", "--dir", str(target), "--hostname", "gw.test"))

    assert "not a folder" in line


def test_a_moved_setup_folder_keeps_working(setup: Path, tmp_path: Path) -> None:
    """Relative paths in the config follow the file, not the working directory."""
    moved = tmp_path / "elsewhere" / "gateway"
    moved.parent.mkdir()
    shutil.move(setup, moved)
    assert not setup.exists()
    config = moved / "submitgw.toml"

    ok(add_user(config, "moved@example.org"))
    rows = list_json(config)

    assert [row["email"] for row in rows] == ["moved@example.org"]
    assert password_matches(config, "moved@example.org", GOOD_PASSWORD)
    assert not setup.exists(), "nothing may be recreated at the old place"


# --- finding the configuration -------------------------------------------------------------


def test_config_from_the_environment(config: Path, tmp_path: Path) -> None:
    ok(add_user(config, "env@example.org"))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()

    out = ok(submitgw("user", "list", cwd=elsewhere, env={"SUBMITGW_CONFIG": str(config)}))

    assert "env@example.org" in out


def test_the_console_script_itself_finds_its_configuration(config: Path, tmp_path: Path) -> None:
    """The commands run in-process elsewhere; this proves `python -m submitgw` is wired."""
    ok(add_user(config, "script@example.org"))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()

    result = submitgw(
        "user", "list", "--json", cwd=elsewhere, env={"SUBMITGW_CONFIG": str(config)}, process=True
    )

    assert [u["email"] for u in json.loads(ok(result))] == ["script@example.org"]
    failed = submitgw("user", "list", cwd=elsewhere, process=True)
    assert failed.returncode == 1 and one_line_error(failed).startswith("Error: ")


def test_config_from_the_working_directory(config: Path, setup: Path) -> None:
    ok(add_user(config, "cwd@example.org"))

    out = ok(submitgw("user", "list", cwd=setup))

    assert "cwd@example.org" in out


def test_explicit_config_beats_the_environment(config: Path, tmp_path: Path) -> None:
    ok(add_user(config, "explicit@example.org"))

    out = ok(
        submitgw(
            "--config",
            str(config),
            "user",
            "list",
            cwd=tmp_path,
            env={"SUBMITGW_CONFIG": str(tmp_path / "missing.toml")},
        )
    )

    assert "explicit@example.org" in out


def test_config_after_the_command_works_like_before_it(config: Path, tmp_path: Path) -> None:
    ok(add_user(config, "after@example.org"))
    env = {"SUBMITGW_CONFIG": str(tmp_path / "missing.toml")}

    after = ok(submitgw("user", "list", "--config", str(config), cwd=tmp_path, env=env))
    nested = ok(
        submitgw("user", "app-password", "list", "after@example.org", "--config", str(config))
    )
    same_twice = ok(submitgw("--config", str(config), "user", "list", "--config", str(config)))

    assert "after@example.org" in after
    assert nested.strip() == "after@example.org has no app passwords"
    assert "after@example.org" in same_twice


def test_config_given_twice_with_two_paths_is_refused(config: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.toml"

    result = submitgw("--config", str(config), "user", "list", "--config", str(other))

    assert result.returncode == 2
    line = one_line_error(result)
    assert "--config given twice" in line and str(other) in line


def test_version_is_the_installed_package_version() -> None:
    result = submitgw("--version", process=True)

    assert ok(result).strip() == f"submitgw {importlib.metadata.version('submitgw')}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["user", "list", "--jsn"], "No such option '--jsn'"),
        (["user", "add"], "Missing argument 'EMAIL'"),
        (["nosuch"], "No such command 'nosuch'"),
        (["user", "history", "a@example.org", "--limit", "0"], "Invalid value for '--limit'"),
    ],
)
def test_a_usage_error_is_one_line_with_status_2(args: list[str], message: str) -> None:
    result = submitgw(*args)

    assert result.returncode == 2
    line = one_line_error(result)
    assert line.startswith("Error: ") and message in line
    assert "--help" in line


def test_a_group_without_a_command_still_shows_its_help() -> None:
    result = submitgw("user")

    assert "Commands:" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_environment_beats_the_working_directory(config: Path, setup: Path) -> None:
    line = one_line_error(
        submitgw("user", "list", cwd=setup, env={"SUBMITGW_CONFIG": "/nonexistent/gw.toml"})
    )

    assert "/nonexistent/gw.toml" in line


def test_no_config_anywhere_says_how_to_make_one(tmp_path: Path) -> None:
    line = one_line_error(submitgw("user", "list", cwd=tmp_path))

    assert "submitgw.toml" in line
    assert "submitgw init" in line


@pytest.mark.parametrize(
    ("replacements", "named"),
    [
        ({"tls_verify = true": "tls_verify = 0"}, "tls_verify"),
        ({'level = "INFO"': 'level = "LOUD"'}, "level"),
        ({"max_recipients = 100": "max_recipients = 1O0"}, "submitgw.toml"),
        ({"[limits]": "[limits]\nmax_recipient = 5"}, "max_recipient"),
    ],
)
def test_a_bad_config_is_a_one_line_error(
    config: Path, replacements: dict[str, str], named: str
) -> None:
    edit(config, replacements)

    line = one_line_error(submitgw("--config", str(config), "user", "list"))

    assert named in line


# --- users ---------------------------------------------------------------------------------


def test_user_add_reads_the_first_line_of_stdin(config: Path) -> None:
    result = submitgw(
        "--config",
        str(config),
        "user",
        "add",
        "alice@example.org",
        "--password-stdin",
        input="s3cret pass phrase\nsecond line\n",
    )

    assert ok(result).strip() == "user alice@example.org added"
    assert password_matches(config, "alice@example.org", "s3cret pass phrase")
    assert not password_matches(config, "alice@example.org", "s3cret pass phrase\n")
    assert not password_matches(config, "alice@example.org", "s3cret pass phrase\nsecond line")


@pytest.mark.parametrize("line_end", ["\r\n", ""])
def test_user_add_strips_crlf_or_takes_an_unterminated_line(config: Path, line_end: str) -> None:
    ok(
        submitgw(
            "--config",
            str(config),
            "user",
            "add",
            "a@example.org",
            "--password-stdin",
            input=GOOD_PASSWORD + line_end,
        )
    )

    assert password_matches(config, "a@example.org", GOOD_PASSWORD)


def test_stored_hash_uses_the_configured_parameters(config: Path) -> None:
    ok(add_user(config, "a@example.org"))
    record = user_record(config, "a@example.org")
    assert record is not None

    params = argon2.extract_parameters(record.password_hash)

    assert (params.type, params.time_cost, params.memory_cost, params.parallelism) == (
        argon2.Type.ID,
        1,
        8192,
        1,
    )


def test_user_add_twice_is_an_error_in_any_case(config: Path) -> None:
    ok(add_user(config, "Alice@Example.ORG", "first of many passwords"))

    line = one_line_error(add_user(config, "alice@example.org", "second of many passwords"))

    assert "alice@example.org" in line
    assert "exists" in line
    assert [row["email"] for row in list_json(config)] == ["alice@example.org"]
    assert password_matches(config, "alice@example.org", "first of many passwords")


@pytest.mark.parametrize(
    "email", ["alice", "a%b@example.org", "a@[192.0.2.1]", "@example.org", "a b@example.org"]
)
def test_user_add_refuses_what_is_not_a_login_address(config: Path, email: str) -> None:
    line = one_line_error(add_user(config, email))

    assert "not a valid email address" in line
    assert list_json(config) == []


def test_user_add_without_terminal_or_stdin_flag_says_what_to_do(config: Path) -> None:
    result = submitgw("--config", str(config), "user", "add", "a@example.org")

    line = one_line_error(result)
    assert "--password-stdin" in line
    assert list_json(config) == []


@pytest.mark.parametrize("stdin", ["", "\n", "\r\n"])
def test_empty_password_is_refused(config: Path, stdin: str) -> None:
    result = submitgw(
        "--config", str(config), "user", "add", "a@example.org", "--password-stdin", input=stdin
    )

    assert "empty" in one_line_error(result)
    assert list_json(config) == []


def test_user_passwd_replaces_the_password(config: Path) -> None:
    ok(add_user(config, "a@example.org", "the old one, retired"))

    out = ok(
        submitgw(
            "--config",
            str(config),
            "user",
            "passwd",
            "A@Example.org",
            "--password-stdin",
            input="the new one, in service\n",
        )
    )

    assert "a@example.org" in out
    assert password_matches(config, "a@example.org", "the new one, in service")
    assert not password_matches(config, "a@example.org", "the old one, retired")


@pytest.mark.parametrize(
    "command", [["passwd", "--password-stdin"], ["disable"], ["enable"], ["delete"]]
)
def test_commands_on_an_unknown_user_are_errors(config: Path, command: list[str]) -> None:
    verb, *flags = command
    result = submitgw(
        "--config", str(config), "user", verb, "ghost@example.org", *flags, input="pw\n"
    )

    line = one_line_error(result)
    assert "ghost@example.org" in line


def test_disable_enable_and_delete(config: Path) -> None:
    ok(add_user(config, "a@example.org"))
    ok(add_user(config, "b@example.org"))

    ok(submitgw("--config", str(config), "user", "disable", "A@example.org"))
    assert [(r["email"], r["enabled"]) for r in list_json(config)] == [
        ("a@example.org", False),
        ("b@example.org", True),
    ]
    assert "disabled" in ok(submitgw("--config", str(config), "user", "list"))

    ok(submitgw("--config", str(config), "user", "enable", "a@example.org"))
    assert [r["enabled"] for r in list_json(config)] == [True, True]

    ok(submitgw("--config", str(config), "user", "delete", "a@example.org"))
    assert [r["email"] for r in list_json(config)] == ["b@example.org"]
    assert user_record(config, "a@example.org") is None


def test_user_list_json_fields(config: Path) -> None:
    ok(add_user(config, "b@example.org"))
    ok(add_user(config, "a@example.org"))
    db, users = store_for(config)
    try:
        users.record_login("b@example.org")
    finally:
        db.dispose()

    rows = list_json(config)

    assert [set(row) for row in rows] == [
        {"email", "enabled", "created_at", "last_login_at", "auth_policy", "networks"}
    ] * 2
    assert [row["email"] for row in rows] == ["a@example.org", "b@example.org"]
    assert rows[0]["last_login_at"] is None
    assert rows[0]["networks"] == []
    for row in rows:
        assert row["enabled"] is True
        assert datetime.fromisoformat(str(row["created_at"])).utcoffset() is not None
    assert datetime.fromisoformat(str(rows[1]["last_login_at"])) >= datetime.fromisoformat(
        str(rows[1]["created_at"])
    )


def test_user_list_of_nobody_is_an_empty_json_list(config: Path) -> None:
    assert list_json(config) == []


# --- authentication policies ---------------------------------------------------------------


def test_user_add_takes_an_auth_policy_and_defaults_to_password_or_certificate(
    config: Path,
) -> None:
    default = ok(add_user(config, "either@example.org"))
    ok(add_user(config, "plain@example.org", auth="password"))
    out = ok(
        submitgw(
            "--config",
            str(config),
            "user",
            "add",
            "both@example.org",
            "--password-stdin",
            "--auth",
            "password+certificate",
            input=GOOD_PASSWORD + "\n",
        )
    )

    assert "next: submitgw pki issue both@example.org" in out
    # A certificate is optional for the default policy: nothing is missing.
    assert default.splitlines() == ["user either@example.org added"]
    assert {row["email"]: row["auth_policy"] for row in list_json(config)} == {
        "both@example.org": "password+certificate",
        "either@example.org": "password-or-certificate",
        "plain@example.org": "password",
    }
    assert password_matches(config, "either@example.org", GOOD_PASSWORD)
    assert password_matches(config, "both@example.org", GOOD_PASSWORD)
    assert "password+certificate" in ok(submitgw("--config", str(config), "user", "list"))


def test_certificate_user_needs_no_password(config: Path) -> None:
    """Nothing to type and no stdin: the stored hash is of a secret nobody knows."""
    ok(
        submitgw(
            "--config", str(config), "user", "add", "cert@example.org", "--auth", "certificate"
        )
    )

    record = user_record(config, "cert@example.org")
    assert record is not None
    assert record.auth_policy == "certificate"
    assert argon2.extract_parameters(record.password_hash).type is argon2.Type.ID
    assert not password_matches(config, "cert@example.org", "")


def test_set_auth_changes_the_policy_and_says_what_is_missing(config: Path) -> None:
    ok(add_user(config, "a@example.org"))

    out = ok(submitgw("--config", str(config), "user", "set-auth", "A@example.org", "certificate"))

    assert out.splitlines() == [
        "user a@example.org now logs in with: certificate",
        "a@example.org has no valid certificate yet: submitgw pki issue a@example.org",
    ]
    assert [row["auth_policy"] for row in list_json(config)] == ["certificate"]
    back = ok(submitgw("--config", str(config), "user", "set-auth", "a@example.org", "password"))
    assert back.strip() == "user a@example.org now logs in with: password"
    assert password_matches(config, "a@example.org", GOOD_PASSWORD), "the password survives"


def test_set_auth_refuses_unknown_users_and_policies(config: Path) -> None:
    ok(add_user(config, "a@example.org"))

    line = one_line_error(
        submitgw("--config", str(config), "user", "set-auth", "ghost@example.org", "certificate")
    )
    bad = submitgw("--config", str(config), "user", "set-auth", "a@example.org", "cert")

    assert line == "Error: no user ghost@example.org"
    assert bad.returncode != 0
    assert "Traceback" not in bad.stderr
    assert (
        "'password', 'certificate', 'password-or-certificate', 'password+certificate'" in bad.stderr
    )
    assert [row["auth_policy"] for row in list_json(config)] == ["password-or-certificate"]


@pytest.mark.parametrize(
    "policy", ["password", "certificate", "password-or-certificate", "password+certificate"]
)
def test_every_policy_can_be_given_and_set(config: Path, policy: str) -> None:
    ok(add_user(config, "a@example.org", auth=policy))
    assert [row["auth_policy"] for row in list_json(config)] == [policy]
    ok(submitgw("--config", str(config), "user", "set-auth", "a@example.org", "password"))
    ok(submitgw("--config", str(config), "user", "set-auth", "a@example.org", policy))
    assert [row["auth_policy"] for row in list_json(config)] == [policy]


def test_set_auth_to_either_credential_needs_no_certificate(config: Path) -> None:
    ok(add_user(config, "a@example.org", auth="password"))

    out = ok(
        submitgw(
            "--config", str(config), "user", "set-auth", "a@example.org", "password-or-certificate"
        )
    )

    assert out.splitlines() == ["user a@example.org now logs in with: password-or-certificate"]


def test_user_add_help_names_every_policy_and_the_default() -> None:
    # Help is wrapped to the terminal, sometimes at a policy name's hyphen.
    text = re.sub(r"-\s+", "-", " ".join(ok(submitgw("user", "add", "--help")).split()))
    for policy in ("password", "certificate", "password+certificate"):
        assert policy in text
    assert "[default: password-or-certificate]" in text


# --- database ------------------------------------------------------------------------------


@pytest.fixture
def fresh_db_config(config: Path) -> Path:
    """The setup pointed at a database file that does not exist yet (relative path)."""
    edit(config, {'url = "sqlite:///submitgw.db"': 'url = "sqlite:///fresh.db"'})
    return config


def test_db_upgrade_then_status(fresh_db_config: Path, setup: Path) -> None:
    status = submitgw("--config", str(fresh_db_config), "db", "status")
    assert "current: empty" in status.stdout
    assert "submitgw db upgrade" in one_line_error(status)

    out = ok(submitgw("--config", str(fresh_db_config), "db", "upgrade"))
    assert out.startswith("database upgraded from empty to ")
    assert (setup / "fresh.db").is_file(), "the relative url is relative to the config file"

    status_out = ok(submitgw("--config", str(fresh_db_config), "db", "status")).splitlines()
    current = status_out[0].split()[-1]
    latest = status_out[1].split()[-1]
    assert status_out[0].startswith("current: ")
    assert current == latest != "empty"

    again = ok(submitgw("--config", str(fresh_db_config), "db", "upgrade"))
    assert again.strip() == f"database already at revision {latest}"


def test_user_commands_refuse_a_database_that_is_behind(fresh_db_config: Path) -> None:
    line = one_line_error(add_user(fresh_db_config, "a@example.org"))

    assert "submitgw db upgrade" in line


def test_serve_refuses_a_database_that_is_behind(fresh_db_config: Path) -> None:
    try:
        result = submitgw(
            "--config",
            str(fresh_db_config),
            "serve",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--listen-tls",
            "off",
            process=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("serve started on a database that is behind")

    line = one_line_error(result)
    assert "submitgw db upgrade" in line
