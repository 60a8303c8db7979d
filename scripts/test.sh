#!/usr/bin/env bash
# The one command that runs the whole test suite, on a developer's machine or in CI (.ci/run):
# it installs what the tests talk to (Debian packages, services, the Python environment) so
# that a fresh Debian machine with Python 3.11 needs nothing else. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR/..
source scripts/lib.sh

# libnss3-tools: certutil, which makes the browser tests' Chromium trust the test CA.
# libnet-ssleay-perl: swaks only recommends it, and without it swaks has no TLS.
# systemd: only for systemd-analyze, which checks contrib/systemd/submitgw.service; nothing
# is started (in a container systemd is not PID 1, and installing it starts no service).
# dovecot-core, dovecot-sqlite: the auth service of scripts/bench.py --peer, run as a private
# instance (with no protocol package installed, the system's Dovecot serves nothing).
# haproxy: the tests run private instances from contrib/haproxy/haproxy.cfg.
DEB_PACKAGES=(swaks libnet-ssleay-perl msmtp postfix dovecot-core dovecot-sqlite curl openssl
    ca-certificates chromium chromium-driver libnss3-tools systemd haproxy)
PG_WAIT_SECONDS=30

in_ci() { [ "${CI:-}" = "true" ]; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        return 1
    fi
}

can_be_root() { as_root true 2>/dev/null; }

deb_installed() {
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = "installed" ]
}

install_debian_packages() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        warn "not a Debian system: cannot check ${DEB_PACKAGES[*]}; tests needing them will skip"
        return 0
    fi
    local missing=() pkg
    for pkg in "${DEB_PACKAGES[@]}"; do
        deb_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        say "Debian packages present: ${DEB_PACKAGES[*]}"
        return 0
    fi
    if ! can_be_root; then
        warn "cannot install ${missing[*]} (not root, no password-less sudo);" \
            "the tests that need them will be skipped (and fail in CI)"
        return 0
    fi
    say "installing Debian packages: ${missing[*]}"
    # Without this, the postfix package asks which kind of mail system to set up.
    echo "postfix postfix/main_mailer_type select No configuration" |
        as_root debconf-set-selections
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
        ! as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        warn "apt-get could not install ${missing[*]}; the tests that need them will tell"
        return 0
    fi
    # The tests start private Postfix instances; a system one would only hold port 25.
    if [[ " ${missing[*]} " == *" postfix "* ]] && as_root postfix status >/dev/null 2>&1; then
        say "stopping the system Postfix that the package just started"
        as_root postfix stop >/dev/null 2>&1 || warn "could not stop the system Postfix"
    fi
}

postgres_ready() {
    command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h 127.0.0.1 -p 5432
}

ensure_postgres() {
    if postgres_ready; then
        say "PostgreSQL is reachable on 127.0.0.1:5432"
        return 0
    fi
    if ! in_ci; then
        warn "PostgreSQL is not reachable on 127.0.0.1:5432; its tests will be skipped"
        return 0
    fi
    if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        local version
        version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n 1)"
        say "starting PostgreSQL $version"
        as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start ||
            warn "pg_ctlcluster could not start PostgreSQL $version"
    fi
    local i
    for ((i = 0; i < PG_WAIT_SECONDS; i++)); do
        if postgres_ready; then
            say "PostgreSQL is reachable on 127.0.0.1:5432"
            return 0
        fi
        sleep 1
    done
    warn "PostgreSQL is still not reachable on 127.0.0.1:5432 after ${PG_WAIT_SECONDS}s"
}

# Quiet when clean: only the errors are worth reading.
run_mypy() {
    local out
    if ! out="$("$VENV/bin/python" -m mypy 2>&1)"; then
        printf '%s\n' "$out" >&2
        echo "ERROR: mypy --strict failed on submitgw, pki and scripts; see [tool.mypy] in pyproject.toml" >&2
        exit 1
    fi
}

install_debian_packages
ensure_postgres
ensure_venv
run_mypy
say "running pytest $*"
exec "$VENV/bin/python" -m pytest "$@"
