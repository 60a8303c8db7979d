# shellcheck shell=bash
# Functions shared by the scripts in this folder (scripts/test.sh, scripts/quickstart.sh).
# Source it from the repository root: the venv path below is relative to it.

VENV=.venv
STAMP="$VENV/.pyproject.sha256"

say() { printf '==> %s\n' "$*"; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }

find_python() {
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# Create $VENV if needed and (re)install submitgw with its test extras whenever pyproject.toml
# changed since the last install. One venv serves the tests and the quick start alike.
ensure_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        local python
        python="$(find_python)" || {
            echo "ERROR: Python 3.11 or newer is needed (python3.11 or python3)" >&2
            exit 1
        }
        if ! "$python" -c 'import ensurepip' 2>/dev/null; then
            # Debian's own Python ships venv's pip bootstrap in a separate package.
            if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
                say "installing python3-venv so that $python can create $VENV"
                DEBIAN_FRONTEND=noninteractive apt-get update -qq
                DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            else
                echo "ERROR: $python cannot create $VENV: install Debian's python3-venv" >&2
                exit 1
            fi
        fi
        say "creating $VENV with $python"
        rm -rf "$VENV"
        "$python" -m venv "$VENV"
    fi
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
    if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
        say "installing submitgw and its test dependencies into $VENV"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
        echo "$want" >"$STAMP"
    else
        say "$VENV is up to date with pyproject.toml"
    fi
}
