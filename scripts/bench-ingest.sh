#!/usr/bin/env bash
# bench-ingest.sh — the daemon's ingest benchmark on a private, real mail stack:
# complaints per second from the complaint mailbox to committed cases with their
# acknowledgement queued, and the latency from a complaint landing in the mailbox
# to its acknowledgement landing in the customer's mailbox (IMAP IDLE).
#
# Usage: scripts/bench-ingest.sh [--mails N] [--samples K] [--batch N] [--send]
#   --mails N    complaints for the throughput run (default 10000; 0 skips it)
#   --samples K  complaints for the latency run, one at a time (default 50; 0 skips it)
#   --batch N    messages per IMAP fetch and engine transaction (default 500)
#   --send       let the SMTP sender deliver at full speed during the throughput run
#                (by default it is throttled, so the figure is ingest alone)
#
# Needs root (the stack runs Dovecot and OpenSMTPD; see docs/mailstack.md). The
# benchmark brings up its own stack on free ports in a temporary directory and takes
# it down at the end; it does not touch a stack already running. It builds in release
# mode (a few minutes the first time). Figures: docs/PERFORMANCE.md, "Ingest".

set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

for arg in "$@"; do
    case "$arg" in
    -h | --help)
        sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    esac
done

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
exec cargo bench --bench ingest -- "$@"
