#!/usr/bin/env bash
# demo.sh — complaintd end to end on the local mail stack, in about a minute:
# brings the stack up (scripts/mailstack.sh) with the demo's users, sends the
# sample complaints in examples/complaints/ by SMTP, runs the daemon
# (examples/local.toml, the default policy in rules/) until every complaint is
# a case and its mail is sent, shows the cases (`complaintd case list`) and the
# mail in the customers' and departments' mailboxes, and brings down what it
# started.
#
# Usage: scripts/demo.sh        (needs root for the mail stack; see docs/mailstack.md)
#
# The stack runs on its default directory and ports, which examples/local.toml
# names; a stack that is already running there is used and left running. The
# daemon's store is /tmp/complaintd-demo/store, emptied first.

set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# examples/local.toml names the stack's default directory and ports.
unset MAILSTACK_DIR MAILSTACK_IMAP_PORT MAILSTACK_IMAPS_PORT MAILSTACK_SMTP_PORT
readonly CONFIG=examples/local.toml
readonly STORE_ROOT=/tmp/complaintd-demo
readonly IMAP=imap://127.0.0.1:10143
readonly SMTP=smtp://127.0.0.1:10025
readonly METRICS=http://127.0.0.1:10080/metrics
readonly CUSTOMERS=(zhang@example.test wang@example.test li@example.test zhao@example.test alice@example.test)
readonly DEPARTMENTS=(service@gas.example network@gas.example network-duty@gas.example billing@gas.example service-office@gas.example)
readonly OTHER_USERS=(complaints@example.test noreply@example.test service-lead@gas.example
    service-supervisor@gas.example network-lead@gas.example billing-lead@gas.example gm@gas.example)

section() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }
die() {
    printf 'demo: %s\n' "$*" >&2
    exit 1
}

daemon_pid=""
stack_started=0
cleanup() {
    if [[ -n $daemon_pid ]] && kill -0 "$daemon_pid" 2>/dev/null; then
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait "$daemon_pid" 2>/dev/null || true
    fi
    if ((stack_started)); then
        section "mail stack: down"
        bash scripts/mailstack.sh down || true
    fi
}
trap cleanup EXIT

command -v curl >/dev/null || die "curl is needed to send and read mail"

section "build"
cargo build --quiet
bin="${CARGO_TARGET_DIR:-target}/debug/complaintd"
[[ -x $bin ]] || die "no binary at $bin"

section "mail stack: up"
if ! bash scripts/mailstack.sh status >/dev/null 2>&1; then
    stack_started=1
    bash scripts/mailstack.sh purge >/dev/null 2>&1 || true
fi
all_users=("${CUSTOMERS[@]}" "${DEPARTMENTS[@]}" "${OTHER_USERS[@]}")
MAILSTACK_USERS="$(
    IFS=,
    echo "${all_users[*]}"
)" bash scripts/mailstack.sh up

empty_mailbox() {
    # Mail of earlier demo runs would be ingested and shown again.
    curl --silent --user "$1:secret" "$IMAP/INBOX" -X 'UID STORE 1:* +FLAGS.SILENT (\Deleted)' >/dev/null 2>&1 || true
    curl --silent --user "$1:secret" "$IMAP/INBOX" -X 'EXPUNGE' >/dev/null 2>&1 || true
}
if ((!stack_started)); then
    for user in complaints@example.test "${CUSTOMERS[@]}" "${DEPARTMENTS[@]}"; do
        empty_mailbox "$user"
    done
fi

section "configuration and policy"
"$bin" config check --config "$CONFIG"

section "send the sample complaints"
for mail in examples/complaints/*.eml; do
    from=$(sed -n 's/^From:.*<\(.*\)>.*/\1/p' "$mail" | head -n 1)
    curl --silent --show-error "$SMTP" --mail-from "$from" \
        --mail-rcpt complaints@example.test --upload-file "$mail"
    echo "sent $(basename "$mail") from $from"
done
expected=$(find examples/complaints -name '*.eml' | wc -l)

section "run the daemon"
rm -rf "$STORE_ROOT"
mkdir -p "$STORE_ROOT"
"$bin" run --config "$CONFIG" 2>"$STORE_ROOT/daemon.log" &
daemon_pid=$!
echo "complaintd run (pid $daemon_pid), log in $STORE_ROOT/daemon.log"

metric() {
    # Empty while the endpoint is not up yet.
    { curl --silent "$METRICS" 2>/dev/null || true; } | awk -v name="$1" '$1 == name { print $2 }'
}
# Done when every complaint is a case and the outbox is empty (the mail is sent).
for _ in $(seq 1 120); do
    cases=$(metric complaintd_cases_ingested_total)
    depth=$(metric complaintd_outbox_depth)
    if [[ ${cases:-0} -ge $expected && ${depth:-1} -eq 0 ]]; then
        break
    fi
    kill -0 "$daemon_pid" 2>/dev/null || die "the daemon stopped; see $STORE_ROOT/daemon.log"
    sleep 0.5
done
echo "cases ingested: ${cases:-0} of $expected; outbox depth: ${depth:-?}"
curl --silent "$METRICS" | grep -v '^#' | sed 's/^/  /'
kill -TERM "$daemon_pid"
wait "$daemon_pid" || die "the daemon did not stop cleanly; see $STORE_ROOT/daemon.log"
daemon_pid=""
echo "daemon stopped cleanly"
((${cases:-0} >= expected)) || die "only ${cases:-0} of $expected complaints became cases"

section "cases"
"$bin" case list --config "$CONFIG"
first=$("$bin" case list --config "$CONFIG" | awk 'NR == 1 { print $1 }')
section "case $first"
"$bin" case show "$first" --config "$CONFIG"

decode() {
    # Folded header lines joined, RFC 2047 encoded words decoded for people (when perl's
    # Encode is there; raw otherwise).
    perl -CS -MEncode -0777 -ne 's/\r?\n[ \t]+/ /g; print decode("MIME-Header", $_)' 2>/dev/null || cat
}
show_mailbox() {
    local user=$1 uids
    uids=$(curl --silent --user "$user:secret" "$IMAP/INBOX" -X 'UID SEARCH ALL' |
        tr -d '\r' | sed 's/^\* SEARCH//')
    printf '\n%s:\n' "$user"
    if [[ -z ${uids// /} ]]; then
        echo "  (empty)"
        return
    fi
    for uid in $uids; do
        curl --silent --user "$user:secret" \
            "$IMAP/INBOX;UID=$uid;SECTION=HEADER.FIELDS%20(SUBJECT)" |
            decode | tr -d '\r' | sed -n 's/^Subject: /  /p'
    done
}

section "customers' mailboxes (acknowledgements)"
for user in "${CUSTOMERS[@]}"; do show_mailbox "$user"; done
section "departments' mailboxes (forwarded complaints)"
for user in "${DEPARTMENTS[@]}"; do show_mailbox "$user"; done
