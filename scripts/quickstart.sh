#!/usr/bin/env bash
# Quick start: see mail flow through submitgw on this machine with nothing else installed.
#
# Sets up (once) a gateway in quickstart/setup with a demo user, starts the capture smarthost
# (scripts/capture_smarthost.py) as the "internal MTA" storing every relayed message in
# quickstart/mail, prints how to send a test message, then runs the gateway in the foreground.
# Ctrl-C (or SIGTERM) stops the gateway and the capture smarthost. Re-runs reuse the setup and
# the demo password; delete quickstart/ to start afresh. Everything listens on 127.0.0.1 only.
#
# Ports, if the defaults are taken: SUBMITGW_QS_SMTP_PORT (STARTTLS, 2587), SUBMITGW_QS_TLS_PORT
# (implicit TLS, 2465), SUBMITGW_QS_WEB_PORT (self-service site, 2443), SUBMITGW_QS_SINK_PORT
# (capture smarthost, 2525), e.g. `SUBMITGW_QS_SMTP_PORT=3587 ./scripts/quickstart.sh`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source-path=SCRIPTDIR/..
source scripts/lib.sh

# Where the setup, demo password and relayed mail live (SUBMITGW_QS_DIR: another folder).
QS_DIR="${SUBMITGW_QS_DIR:-quickstart}"
SETUP="$QS_DIR/setup"
CONFIG="$SETUP/submitgw.toml"
PASSWORD_FILE="$QS_DIR/demo-password.txt"
MAIL_DIR="$QS_DIR/mail"
SINK_OUT="$QS_DIR/capture-smarthost.out"
DEMO_USER=demo@example.org
SMTP_PORT="${SUBMITGW_QS_SMTP_PORT:-2587}"
TLS_PORT="${SUBMITGW_QS_TLS_PORT:-2465}"
WEB_PORT="${SUBMITGW_QS_WEB_PORT:-2443}"
SINK_PORT="${SUBMITGW_QS_SINK_PORT:-2525}"
SUBMISSION="127.0.0.1:$SMTP_PORT"
SUBMISSIONS="127.0.0.1:$TLS_PORT"
SELFSERVICE="127.0.0.1:$WEB_PORT"
SMARTHOST="127.0.0.1:$SINK_PORT"
START_WAIT_SECONDS=15

SINK_PID=""
GATEWAY_PID=""

# Stop a child process we started and wait for it; a no-op if it already ended.
stop_child() {
    local pid="$1" name="$2"
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        say "stopping the $name (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    stop_child "$GATEWAY_PID" gateway
    GATEWAY_PID=""
    stop_child "$SINK_PID" "capture smarthost"
    SINK_PID=""
}
trap cleanup EXIT
# Exiting runs the EXIT trap, which stops both children.
trap 'exit 130' INT
trap 'exit 143' TERM

# Each port a number, all different, none already listening: one line naming the variable
# to change, before anything is installed or started.
check_ports() {
    local var port seen=" "
    for var in SUBMITGW_QS_SMTP_PORT SUBMITGW_QS_TLS_PORT SUBMITGW_QS_WEB_PORT \
        SUBMITGW_QS_SINK_PORT; do
        case "$var" in
        SUBMITGW_QS_SMTP_PORT) port="$SMTP_PORT" ;;
        SUBMITGW_QS_TLS_PORT) port="$TLS_PORT" ;;
        SUBMITGW_QS_WEB_PORT) port="$WEB_PORT" ;;
        SUBMITGW_QS_SINK_PORT) port="$SINK_PORT" ;;
        esac
        if ! [[ "$port" =~ ^[0-9]{1,5}$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
            echo "ERROR: $var=$port is not a port number (1-65535)" >&2
            exit 1
        fi
        if [[ "$seen" == *" $port "* ]]; then
            echo "ERROR: port $port is given twice; set $var to another port" >&2
            exit 1
        fi
        seen+="$port "
        # A connection that succeeds means something already listens there.
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            local other=$((port + 1000))
            [ "$other" -le 65535 ] || other=$((port - 1000))
            echo "ERROR: 127.0.0.1:$port is in use; choose another port with $var, e.g. $var=$other $0" >&2
            exit 1
        fi
    done
}

demo_user_exists() {
    "$VENV/bin/submitgw" --config "$CONFIG" user list | cut -f1 | grep -qx "$DEMO_USER"
}

ensure_setup() {
    local created=false
    if [ ! -f "$CONFIG" ]; then
        say "creating the gateway setup in $SETUP"
        "$VENV/bin/submitgw" init --dir "$SETUP" --hostname localhost --smarthost "$SMARTHOST"
        created=true
    else
        say "reusing the gateway setup in $SETUP"
    fi
    local new_password=false
    if [ ! -s "$PASSWORD_FILE" ]; then
        (
            umask 077
            # Random, and drawn again should it break the setup's [passwords] policy.
            "$VENV/bin/python" - "$CONFIG" "$DEMO_USER" >"$PASSWORD_FILE" <<'PY'
import secrets
import sys
from pathlib import Path

from submitgw.config import load
from submitgw.rules.passwords import PasswordRejected, check_rules

rules = load(Path(sys.argv[1])).passwords
length = min(max(16, rules.min_length), rules.max_length)
for _ in range(100):
    password = secrets.token_urlsafe(length)[:length]
    try:
        check_rules(password, sys.argv[2], rules)
    except PasswordRejected:
        continue
    print(password)
    break
else:
    sys.exit("cannot draw a demo password that passes the [passwords] policy")
PY
        )
        chmod 600 "$PASSWORD_FILE"
        new_password=true
    fi
    # A setup made just now has no users: no need to start the CLI to ask.
    if [ "$created" = true ] || ! demo_user_exists; then
        say "creating the demo user $DEMO_USER"
        "$VENV/bin/submitgw" --config "$CONFIG" user add "$DEMO_USER" --password-stdin \
            <"$PASSWORD_FILE"
    elif [ "$new_password" = true ]; then
        say "setting a new password for $DEMO_USER"
        "$VENV/bin/submitgw" --config "$CONFIG" user passwd "$DEMO_USER" --password-stdin \
            <"$PASSWORD_FILE"
    fi
}

start_sink() {
    mkdir -p "$MAIL_DIR"
    : >"$SINK_OUT"
    # Its "stored ..." log lines go to the terminal (stderr); stdout only announces the port.
    "$VENV/bin/python" scripts/capture_smarthost.py --listen "$SMARTHOST" --dir "$MAIL_DIR" \
        >"$SINK_OUT" &
    SINK_PID=$!
    local i
    for ((i = 0; i < START_WAIT_SECONDS * 10; i++)); do
        if grep -q 'capture-smarthost listening on' "$SINK_OUT"; then
            return 0
        fi
        if ! kill -0 "$SINK_PID" 2>/dev/null; then
            SINK_PID=""
            echo "ERROR: the capture smarthost did not start (is $SMARTHOST in use? set SUBMITGW_QS_SINK_PORT)" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "ERROR: the capture smarthost did not start within ${START_WAIT_SECONDS}s" >&2
    exit 1
}

banner() {
    local password ca mail smtplib_cmd
    password="$(head -n 1 "$PASSWORD_FILE")"
    ca="$(realpath "$SETUP/ca/ca.crt")"
    mail="$(realpath "$MAIL_DIR")"
    smtplib_cmd="import smtplib, ssl; s = smtplib.SMTP('127.0.0.1', ${SUBMISSION##*:});"
    smtplib_cmd+=" s.starttls(context=ssl.create_default_context(cafile='$ca'));"
    smtplib_cmd+=" s.login('$DEMO_USER', '$password');"
    smtplib_cmd+=" s.sendmail('$DEMO_USER', ['someone@example.net'],"
    smtplib_cmd+=" 'Subject: hello\\r\\n\\r\\nHello from submitgw.\\r\\n'); s.quit()"
    cat <<EOF

========================================================================================
 submitgw quick start
   submission (STARTTLS):  $SUBMISSION
   submissions (TLS):      $SUBMISSIONS
   demo user:              $DEMO_USER
   demo password:          $password   (saved in $PASSWORD_FILE)
   self-service site:      https://localhost:${SELFSERVICE##*:}/   (sign in as the demo user)
   CA certificate:         $ca
   relayed mail lands in:  $mail/<seq>.eml (+ .json envelope)

 Send a test message from another terminal with swaks:
   swaks --server $SUBMISSION --tls --tls-verify --tls-ca-path '$ca' --auth PLAIN --auth-user $DEMO_USER --auth-password '$password' --from $DEMO_USER --to someone@example.net

 or with Python alone:
   python3 -c "$smtplib_cmd"

 Change the demo password or make an app password in a browser that trusts the CA
 certificate above, or with curl:
   curl --cacert '$ca' -H Content-Type:application/json -d '{"email": "$DEMO_USER", "password": "$password"}' https://localhost:${SELFSERVICE##*:}/api/session

 Ctrl-C stops the gateway and the capture smarthost.
========================================================================================

EOF
}

check_ports
ensure_venv
ensure_setup
say "starting the capture smarthost on $SMARTHOST, storing mail in $MAIL_DIR"
start_sink
banner
say "starting submitgw (JSON log lines follow)"
# In the background so that a signal to this script runs its trap at once; `wait` returns then.
"$VENV/bin/submitgw" --config "$CONFIG" serve \
    --listen "$SUBMISSION" --listen-tls "$SUBMISSIONS" --smarthost "$SMARTHOST" \
    --listen-selfservice "$SELFSERVICE" &
GATEWAY_PID=$!
status=0
wait "$GATEWAY_PID" || status=$?
GATEWAY_PID=""
if [ "$status" -ne 0 ]; then
    echo "ERROR: submitgw exited with status $status (are $SUBMISSION, $SUBMISSIONS and $SELFSERVICE free? see SUBMITGW_QS_*_PORT at the top of $0)" >&2
fi
cleanup
exit "$status"
