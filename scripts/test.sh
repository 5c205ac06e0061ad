#!/usr/bin/env bash
# test.sh — complaintd's whole test suite: brings the local mail stack up
# (scripts/mailstack.sh), runs every test against it, brings the stack down
# again if this script started it, and exits with the tests' status.
#
# The stack is configured by the same MAILSTACK_* variables as mailstack.sh;
# they are exported so the tests' harness (tests/support/) finds the stack.
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -- --nocapture`.

set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export MAILSTACK_DIR="${MAILSTACK_DIR:-/tmp/complaintd-mailstack}"
export MAILSTACK_IMAP_PORT="${MAILSTACK_IMAP_PORT:-10143}"
export MAILSTACK_IMAPS_PORT="${MAILSTACK_IMAPS_PORT:-10993}"
export MAILSTACK_SMTP_PORT="${MAILSTACK_SMTP_PORT:-10025}"

section() { printf '\n==== %s ====\n' "$*"; }

# A stack that was already running (a developer's) is left running.
stack_was_running=0
if bash scripts/mailstack.sh status >/dev/null 2>&1; then
    stack_was_running=1
fi

bring_stack_down() {
    if ((stack_was_running == 0)); then
        section "mail stack: down"
        bash scripts/mailstack.sh down || true
    fi
}
trap bring_stack_down EXIT

section "mail stack: up"
if ((stack_was_running == 0)); then
    # Start from an empty stack, not from the users and mail of earlier runs.
    bash scripts/mailstack.sh purge
fi
bash scripts/mailstack.sh up

failures=()

section "cargo test --all-targets"
cargo test --all-targets "$@" || failures+=("cargo test --all-targets")

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
