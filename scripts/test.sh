#!/usr/bin/env bash
# test.sh — complaintd's whole test suite: brings up a mail stack
# (scripts/mailstack.sh), runs every test against it, brings the stack down
# again, and exits with the tests' status.
#
# By default the run gets a private stack of its own (a fresh directory and
# free ports), so several runs on one machine — other worktrees, a developer's
# stack on the default ports — never disturb each other. Set MAILSTACK_DIR
# (and the MAILSTACK_*_PORT variables) to use a given stack instead; one that
# was already running is then left running. The variables are exported so the
# tests' harness (tests/support/) finds the stack.
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -- --nocapture`;
# `scripts/test.sh --test e2e_lifecycle` runs that one file on a private stack.

set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

section() { printf '\n==== %s ====\n' "$*"; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Sets variable $1 to a port in 20000–32767 (below Linux's range of source
# ports for outgoing connections, so a server stopped and started by a test
# finds its port free again) that nothing listens on now and
# that was not picked before. The stack fails with a clear message in the
# unlikely case that the port is taken before it starts.
pick_free_port() {
    local port attempt
    for ((attempt = 0; attempt < 100; attempt++)); do
        port=$((20000 + RANDOM % 12768))
        if ! port_in_use "$port" && [[ " ${picked_ports[*]} " != *" $port "* ]]; then
            picked_ports+=("$port")
            printf -v "$1" '%s' "$port"
            return 0
        fi
    done
    echo "test.sh: found no free port" >&2
    return 1
}

own_stack=0
stack_was_running=0
picked_ports=()
if [[ -z ${MAILSTACK_DIR:-} ]]; then
    own_stack=1
    MAILSTACK_DIR=$(mktemp -d /tmp/complaintd-test-stack.XXXXXX)
    pick_free_port MAILSTACK_IMAP_PORT
    pick_free_port MAILSTACK_IMAPS_PORT
    pick_free_port MAILSTACK_SMTP_PORT
elif bash scripts/mailstack.sh status >/dev/null 2>&1; then
    stack_was_running=1
fi
export MAILSTACK_DIR
export MAILSTACK_IMAP_PORT="${MAILSTACK_IMAP_PORT:-10143}"
export MAILSTACK_IMAPS_PORT="${MAILSTACK_IMAPS_PORT:-10993}"
export MAILSTACK_SMTP_PORT="${MAILSTACK_SMTP_PORT:-10025}"

bring_stack_down() {
    if ((own_stack)); then
        section "mail stack: down"
        bash scripts/mailstack.sh purge || true
        rm -rf "$MAILSTACK_DIR"
    elif ((stack_was_running == 0)); then
        section "mail stack: down"
        bash scripts/mailstack.sh down || true
    fi
}
trap bring_stack_down EXIT

section "mail stack: up"
bash scripts/mailstack.sh up

failures=()

# Arguments that pick targets (`--test e2e_lifecycle`, `--lib`) replace
# `--all-targets`, so one test file can be run on a private stack.
targets=(--all-targets)
for arg in "$@"; do
    case $arg in
    --) break ;;
    --test | --test=* | --lib | --bin | --bin=* | --bins | --bench | --bench=* | --benches | --example | --example=* | --examples | --doc | --tests)
        targets=()
        break
        ;;
    esac
done

section "cargo test ${targets[*]} $*"
cargo test "${targets[@]}" "$@" || failures+=("cargo test ${targets[*]} $*")

# ---------------------------------------------------------------------------
# Further test programs go here. Every executable `scripts/test.d/*.sh`
# (e.g. crash-and-restart scripts for the daemon) runs after cargo test, with
# the stack up and the MAILSTACK_* variables exported; a non-zero exit fails
# the run. None exist yet.
# ---------------------------------------------------------------------------
shopt -s nullglob
for script in scripts/test.d/*.sh; do
    section "$script"
    bash "$script" || failures+=("$script")
done

section "summary"
if ((${#failures[@]} > 0)); then
    printf 'FAILED: %s\n' "${failures[@]}"
    exit 1
fi
echo "all test suites passed"
