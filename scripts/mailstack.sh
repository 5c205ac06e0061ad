#!/usr/bin/env bash
# mailstack.sh — a private, loopback-only mail stack (Dovecot IMAP + OpenSMTPD
# SMTP → Dovecot LMTP → Maildir) for complaintd's end-to-end tests and for
# trying the daemon by hand. See docs/mailstack.md.
#
# Usage: scripts/mailstack.sh up|down|purge|status|stop-imap|start-imap|stop-smtp|start-smtp
#
# Environment:
#   MAILSTACK_DIR         root directory for configs, mail, logs (default /tmp/complaintd-mailstack)
#   MAILSTACK_USERS       comma-separated full addresses to add (password "secret")
#   MAILSTACK_IMAP_PORT   IMAP plain + STARTTLS port (default 10143)
#   MAILSTACK_IMAPS_PORT  IMAP over TLS port (default 10993)
#   MAILSTACK_SMTP_PORT   SMTP port (default 10025)
#
# Every command is idempotent and serialised by a lock in $MAILSTACK_DIR, so
# tests running in parallel may all call `up` with their own users.

set -Eeuo pipefail

readonly MAILSTACK_DIR="${MAILSTACK_DIR:-/tmp/complaintd-mailstack}"
readonly IMAP_PORT="${MAILSTACK_IMAP_PORT:-10143}"
readonly IMAPS_PORT="${MAILSTACK_IMAPS_PORT:-10993}"
readonly SMTP_PORT="${MAILSTACK_SMTP_PORT:-10025}"
readonly REQUESTED_USERS="${MAILSTACK_USERS:-}"

# Mail is owned by one virtual uid/gid; no system user is needed for it.
readonly VMAIL_UID=5000
readonly PASSWORD=secret
readonly SMTP_HOSTNAME=mail.example.test
# Seconds to wait for a server to come up or go down before giving up.
readonly WAIT_SECONDS=30
readonly REQUIRED_PACKAGES=(dovecot-imapd dovecot-lmtpd opensmtpd openssl ca-certificates util-linux procps)

R="$MAILSTACK_DIR"
ETC="$R/etc"
RUN="$R/run"
LOG="$R/log"
TLS="$R/tls"
DOVECOT_CONF="$ETC/dovecot.conf"
SMTPD_CONF="$ETC/smtpd.conf"
DOVECOT_PID_FILE="$RUN/dovecot/master.pid"
SMTPD_PID_FILE="$RUN/smtpd.pid"

# set -e would otherwise end the script without a word.
trap 'log "error: command failed at line $LINENO: $BASH_COMMAND"' ERR

log() { printf 'mailstack: %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

usage() {
    cat >&2 <<'EOF'
usage: mailstack.sh up|down|purge|status|stop-imap|start-imap|stop-smtp|start-smtp
  up          install packages if missing, write configs, start both servers
              (or add MAILSTACK_USERS to a running stack), wait until they answer
  down        stop both servers; nothing of the stack keeps running
  purge       down, then delete the stack's users, mail, queue, certificates, logs
  status      print the state of both servers; exit 0 only if both run
  stop-imap / start-imap / stop-smtp / start-smtp
              stop or start one server, for outage tests (needs a prior `up`)
EOF
    exit 2
}

# ---------------------------------------------------------------- validation

validate_port() {
    local name=$1 value=$2
    if ! [[ $value =~ ^[0-9]+$ ]] || ((value < 1 || value > 65535)); then
        die "$name must be a TCP port number, got '$value'"
    fi
}

# Addresses become lines of passwd-file and smtpd tables, so only a safe
# character set is accepted: anything else could inject entries.
validate_address() {
    local address=$1
    [[ $address =~ ^[a-z0-9][a-z0-9._-]*@[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] ||
        die "MAILSTACK_USERS: '$address' is not an address of the form local@domain (letters, digits, '.', '_', '-'; no '+', which is the subaddress delimiter)"
}

# Prints the requested users, lowercased and validated, one per line.
requested_users() {
    local raw address
    IFS=',' read -r -a raw <<<"$REQUESTED_USERS"
    for address in "${raw[@]}"; do
        address="${address//[[:space:]]/}"
        [[ -z $address ]] && continue
        address="${address,,}"
        validate_address "$address"
        printf '%s\n' "$address"
    done
}

# -------------------------------------------------------------- installation

package_installed() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

ensure_packages() {
    local missing=() package
    for package in "${REQUIRED_PACKAGES[@]}"; do
        package_installed "$package" || missing+=("$package")
    done
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || die "packages missing (${missing[*]}) and not root to install them"
    log "installing ${missing[*]}"
    # The package scripts would start system-wide daemons on 0.0.0.0; a
    # policy-rc.d that exits 101 forbids that for the duration of the install.
    local own_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 0755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    local status=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o DPkg::Lock::Timeout=300 "${missing[@]}"
    } >"$LOG/apt.log" 2>&1 || status=$?
    ((own_policy)) && rm -f /usr/sbin/policy-rc.d
    ((status == 0)) || {
        tail -n 30 "$LOG/apt.log" >&2
        die "package installation failed (log: $LOG/apt.log)"
    }
}

# ------------------------------------------------------------------- configs

ensure_layout() {
    mkdir -p "$R" "$ETC" "$RUN" "$LOG" "$TLS" "$R/state" "$R/mail" \
        "$R/smtpd/spool" "$R/smtpd/run"
    # Dovecot's mail processes run as the virtual uid and must traverse the root.
    chmod 0755 "$R"
    chmod 0711 "$R/smtpd/spool"
    chown "$VMAIL_UID:$VMAIL_UID" "$R/mail"
    touch "$ETC/users"
}

ensure_tls() {
    [[ -s $TLS/ca.pem && -s $TLS/cert.pem && -s $TLS/key.pem ]] && return 0
    log "creating a private CA and a certificate for localhost / 127.0.0.1"
    # A CA plus a leaf certificate, because rustls refuses a CA certificate
    # used as a server certificate.
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=complaintd mailstack CA" \
        -keyout "$TLS/ca-key.pem" -out "$TLS/ca.pem" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        >"$LOG/openssl.log" 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$TLS/key.pem" -out "$TLS/cert.csr" >>"$LOG/openssl.log" 2>&1
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=DNS:localhost,DNS:$SMTP_HOSTNAME,IP:127.0.0.1" >"$TLS/cert.ext"
    openssl x509 -req -in "$TLS/cert.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca-key.pem" \
        -CAcreateserial -days 3650 -extfile "$TLS/cert.ext" -out "$TLS/leaf.pem" >>"$LOG/openssl.log" 2>&1
    cat "$TLS/leaf.pem" "$TLS/ca.pem" >"$TLS/cert.pem"
    chmod 0600 "$TLS/key.pem" "$TLS/ca-key.pem"
}

# Writes $1 from stdin only if the content differs, atomically.
write_if_changed() {
    local target=$1 tmp
    tmp=$(mktemp "$target.XXXXXX")
    cat >"$tmp"
    if [[ -f $target ]] && cmp -s "$tmp" "$target"; then
        rm -f "$tmp"
        return 1
    fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$target"
}

all_users() { sed -n 's/^\([^:]*\):.*/\1/p' "$ETC/users"; }

# Adds the requested users to the users file (never removes any: other tests
# may still be using theirs). Returns 0 if users were added.
merge_users() {
    local new
    new=$(requested_users) || exit 1
    [[ -z $new ]] && return 1
    {
        all_users
        printf '%s\n' "$new"
    } | sort -u | sed "s/\$/:{PLAIN}$PASSWORD::::::/" | write_if_changed "$ETC/users"
}

write_configs() {
    local instance
    instance="complaintd-mailstack-$(printf '%s' "$R" | sha256sum | cut -c1-12)"

    DOVECOT_CONF_CHANGED=0
    SMTPD_CONF_CHANGED=0
    write_if_changed "$DOVECOT_CONF" <<EOF && DOVECOT_CONF_CHANGED=1
# Generated by scripts/mailstack.sh; rewritten on every \`up\`.
instance_name = $instance
base_dir = $RUN/dovecot
state_dir = $R/state
log_path = $LOG/dovecot.log
info_log_path = $LOG/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
disable_plaintext_auth = no
auth_mechanisms = plain login
ssl = yes
ssl_cert = <$TLS/cert.pem
ssl_key = <$TLS/key.pem
ssl_dh = </usr/share/dovecot/dh.pem
first_valid_uid = $VMAIL_UID
last_valid_uid = $VMAIL_UID
mail_location = maildir:~/Maildir
mail_max_userip_connections = 200
# user+detail@domain is delivered to user@domain's INBOX.
recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
# passdb and userdb share one passwd-file (same args); entries carry {PLAIN}.
passdb {
  driver = passwd-file
  args = username_format=%Lu $ETC/users
}
userdb {
  driver = passwd-file
  args = username_format=%Lu $ETC/users
  default_fields = uid=$VMAIL_UID gid=$VMAIL_UID home=$R/mail/%Ld/%Ln
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $IMAP_PORT
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $IMAPS_PORT
    ssl = yes
  }
}
service lmtp {
  unix_listener $RUN/lmtp {
    mode = 0666
  }
}
EOF

    # OpenSMTPD never resolves names through DNS here: files only.
    write_if_changed "$ETC/resolv.conf" <<EOF || true
lookup file
nameserver 127.0.0.1
EOF
    write_if_changed "$ETC/hosts" <<EOF || true
127.0.0.1 localhost $SMTP_HOSTNAME $(uname -n)
::1 localhost
EOF
    write_if_changed "$ETC/smtpd-userbase" <<EOF || true
vmail $VMAIL_UID:$VMAIL_UID:$R/mail
EOF
    write_smtpd_tables || true
    write_if_changed "$SMTPD_CONF" <<EOF && SMTPD_CONF_CHANGED=1
# Generated by scripts/mailstack.sh; rewritten on every \`up\`.
table vusers file:$ETC/smtpd-vusers
table vdomains file:$ETC/smtpd-domains
table ubase file:$ETC/smtpd-userbase
listen on 127.0.0.1 port $SMTP_PORT hostname $SMTP_HOSTNAME
action "dovecot" lmtp "$RUN/lmtp" rcpt-to virtual <vusers> userbase <ubase>
match from local for domain <vdomains> action "dovecot"
EOF
    return 0
}

# Returns 0 if a table changed.
write_smtpd_tables() {
    local changed=1
    # A file table must not be empty or smtpd rejects the config, so an
    # address nobody uses keeps it non-empty.
    {
        printf 'postmaster@%s vmail\n' "$SMTP_HOSTNAME"
        all_users | sed 's/$/ vmail/'
    } | write_if_changed "$ETC/smtpd-vusers" && changed=0
    {
        printf '%s\n' "$SMTP_HOSTNAME"
        all_users | sed 's/.*@//'
    } | sort -u | write_if_changed "$ETC/smtpd-domains" && changed=0
    return $changed
}

# ------------------------------------------------------------- process state

# Prints the pid in file $1 if that process is alive, its command is $2 and
# its command line names config file $3 (a stale pid file may name a reused
# pid, even another stack's server).
live_pid() {
    local file=$1 command=$2 config=$3 pid
    [[ -s $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/comm && "$(<"/proc/$pid/comm")" == "$command" ]] || return 1
    tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "$config" || return 1
    printf '%s\n' "$pid"
}

dovecot_pid() { live_pid "$DOVECOT_PID_FILE" dovecot "$DOVECOT_CONF"; }
smtpd_pid() { live_pid "$SMTPD_PID_FILE" smtpd "$SMTPD_CONF"; }

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True if the server on port $1 greets with a line starting with $2.
# Runs in a subshell so that the descriptor closes with it.
greets() (
    local port=$1 expected=$2 line
    exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
    IFS= read -r -t 5 line <&3 && [[ $line == "$expected"* ]]
) 2>/dev/null

# Polls condition "$@" every 0.1 s until it holds or WAIT_SECONDS pass.
wait_until() {
    local attempt
    for ((attempt = 0; attempt < WAIT_SECONDS * 10; attempt++)); do
        "$@" && return 0
        sleep 0.1
    done
    return 1
}

# True if no live (non-zombie) process is left in session $1.
# pgrep cannot leave zombies out, ps can.
# shellcheck disable=SC2009
session_gone() { ! ps -s "$1" -o stat= 2>/dev/null | grep -q '^[^Z]'; }

# Stops everything in the session led by pid $1. Both servers run as session
# and process-group leaders, so TERM to the group reaches every process they
# forked at once (the leader alone would wait for its children), and KILL
# follows for anything that ignores it: nothing survives `down`.
terminate_session() {
    local pid=$1
    kill -TERM -- "-$pid" 2>/dev/null || true
    wait_until session_gone "$pid" && return 0
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait_until session_gone "$pid" || die "processes of session $pid survive: $(pgrep -s "$pid" | tr '\n' ' ')"
}

# ------------------------------------------------------------------- dovecot

start_imap() {
    if dovecot_pid >/dev/null; then return 0; fi
    local port
    for port in "$IMAP_PORT" "$IMAPS_PORT"; do
        port_open "$port" && die "port $port is already in use by another process (set MAILSTACK_IMAP_PORT / MAILSTACK_IMAPS_PORT)"
    done
    dovecot -n -c "$DOVECOT_CONF" >/dev/null 2>"$LOG/dovecot-check.log" ||
        die "dovecot rejects $DOVECOT_CONF: $(cat "$LOG/dovecot-check.log")"
    # Dovecot daemonizes (becoming a session leader); the private mount
    # namespace only hides the host's resolver from it. Fd 9 is the lock.
    # shellcheck disable=SC2016 # $1 and $2 are the inner shell's arguments.
    unshare -m --propagation private sh -c '
        mount --bind "$1/resolv.conf" /etc/resolv.conf &&
        mount --bind "$1/hosts" /etc/hosts &&
        exec dovecot -c "$2"' sh "$ETC" "$DOVECOT_CONF" </dev/null >>"$LOG/dovecot.log" 2>&1 9>&- ||
        die "dovecot did not start (log: $LOG/dovecot.log)"
    wait_until greets "$IMAP_PORT" "* OK" || die "IMAP does not answer on port $IMAP_PORT (log: $LOG/dovecot.log)"
    wait_until port_open "$IMAPS_PORT" || die "IMAPS does not answer on port $IMAPS_PORT (log: $LOG/dovecot.log)"
}

stop_imap() {
    local pid
    pid=$(dovecot_pid) || return 0
    terminate_session "$pid"
    rm -f "$DOVECOT_PID_FILE"
}

# -------------------------------------------------------------------- smtpd

start_smtp() {
    if smtpd_pid >/dev/null; then return 0; fi
    port_open "$SMTP_PORT" && die "port $SMTP_PORT is already in use by another process (set MAILSTACK_SMTP_PORT)"
    # OpenSMTPD's queue (/var/spool/smtpd) and control socket (/run/smtpd.sock)
    # are compiled in. A private mount namespace gives this instance its own
    # spool and /run (no stale socket, several stacks per machine) and a
    # resolver configuration that reads files only (no DNS queries).
    mkdir -p /var/spool/smtpd
    rm -f "$R/smtpd/run/smtpd.sock"
    # shellcheck disable=SC2016 # $1.. are the inner shell's arguments.
    local namespace_setup='
        mount --bind "$1/etc/resolv.conf" /etc/resolv.conf &&
        mount --bind "$1/etc/hosts" /etc/hosts &&
        mount --bind "$1/smtpd/spool" /var/spool/smtpd &&
        mount --bind "$1/smtpd/run" /run'
    # shellcheck disable=SC2016
    unshare -m --propagation private sh -c "$namespace_setup"' &&
        exec smtpd -n -f "$2"' sh "$R" "$SMTPD_CONF" >"$LOG/smtpd-check.log" 2>&1 ||
        die "smtpd rejects $SMTPD_CONF: $(cat "$LOG/smtpd-check.log")"
    # smtpd runs in the foreground (-d) as leader of its own session, so
    # `down` can find every process it forked. The shell records its own pid
    # before exec-ing smtpd, so the pid file holds smtpd's pid.
    # shellcheck disable=SC2016
    setsid unshare -m --propagation private sh -c "$namespace_setup"' &&
        echo $$ >"$3" &&
        exec smtpd -d -f "$2"' sh "$R" "$SMTPD_CONF" "$SMTPD_PID_FILE" \
        </dev/null >>"$LOG/smtpd.log" 2>&1 9>&- &
    wait_until greets "$SMTP_PORT" "220" || die "SMTP does not answer on port $SMTP_PORT (log: $LOG/smtpd.log)"
    wait_until smtpd_pid >/dev/null || die "smtpd wrote no pid file"
}

stop_smtp() {
    local pid
    pid=$(smtpd_pid) || return 0
    terminate_session "$pid"
    rm -f "$SMTPD_PID_FILE" "$R/smtpd/run/smtpd.sock"
}

# Makes a running smtpd re-read its tables (users and domains).
reload_smtp_tables() {
    local pid
    pid=$(smtpd_pid) || return 0
    nsenter -t "$pid" -m smtpctl update table vusers >/dev/null
    nsenter -t "$pid" -m smtpctl update table vdomains >/dev/null
}

# True if the SMTP server accepts $1 as a recipient (a full dialog without
# sending data), so `up` returns only once new users can receive mail.
smtp_accepts_recipient() (
    local recipient=$1 line ok=1
    exec 4<>"/dev/tcp/127.0.0.1/$SMTP_PORT" || exit 1
    if IFS= read -r -t 5 line <&4 && [[ $line == 220* ]] &&
        printf 'HELO mailstack.local\r\n' >&4 && IFS= read -r -t 5 line <&4 && [[ $line == 250* ]] &&
        printf 'MAIL FROM:<>\r\n' >&4 && IFS= read -r -t 5 line <&4 && [[ $line == 250* ]] &&
        printf 'RCPT TO:<%s>\r\n' "$recipient" >&4 && IFS= read -r -t 5 line <&4 && [[ $line == 250* ]]; then
        ok=0
    fi
    printf 'QUIT\r\n' >&4 || true
    exit $ok
) 2>/dev/null

# True if Dovecot's passdb and userdb both know $1. Dovecot re-reads a changed
# passwd-file at most once a second, so `up` polls this before returning.
dovecot_knows_user() {
    doveadm -c "$DOVECOT_CONF" auth lookup "$1" 2>/dev/null | grep -q '^passdb:' &&
        doveadm -c "$DOVECOT_CONF" user "$1" >/dev/null 2>&1
}

# A running server keeps the configuration it started with: Dovecot reloads
# gracefully; smtpd is only warned about (restarting it would cut the
# connections of whoever else uses the stack).
apply_changed_configs() {
    local pid
    if ((DOVECOT_CONF_CHANGED)) && pid=$(dovecot_pid); then
        log "dovecot.conf changed: reloading Dovecot"
        kill -HUP "$pid"
    fi
    if ((SMTPD_CONF_CHANGED)) && smtpd_pid >/dev/null; then
        log "warning: smtpd.conf changed (ports?) but smtpd keeps its old one until \`down\` and \`up\`"
    fi
}

# --------------------------------------------------------------------- main

print_endpoints() {
    cat <<EOF
mailstack up in $R
  IMAP   127.0.0.1:$IMAP_PORT (plain, STARTTLS)
  IMAPS  127.0.0.1:$IMAPS_PORT (TLS)
  SMTP   127.0.0.1:$SMTP_PORT (plain, no auth)
  CA     $TLS/ca.pem
  users  $(all_users | wc -l) (password "$PASSWORD")
EOF
}

cmd_up() {
    ensure_layout
    ensure_packages
    ensure_tls
    local added=0
    merge_users && added=1
    write_configs
    apply_changed_configs
    start_imap
    start_smtp
    reload_smtp_tables
    # The servers are configured; waiting for them to see new users needs no
    # lock, and parallel callers should not wait for each other's users.
    flock -u 9
    local user
    while IFS= read -r user; do
        [[ -z $user ]] && continue
        wait_until dovecot_knows_user "$user" || die "Dovecot does not know $user after reload (log: $LOG/dovecot.log)"
        wait_until smtp_accepts_recipient "$user" || die "SMTP does not accept $user after reload (log: $LOG/smtpd.log)"
    done < <(requested_users)
    ((added)) && log "added: $(requested_users | tr "\n" " ")"
    print_endpoints
}

cmd_down() {
    stop_smtp
    stop_imap
    printf 'mailstack down (%s)\n' "$R"
}

# Stops the stack and deletes everything it wrote (only the paths it owns
# under $R, never $R itself wholesale), so the next `up` starts empty.
cmd_purge() {
    cmd_down
    rm -rf "$ETC" "$RUN" "$LOG" "$TLS" "$R/state" "$R/mail" "$R/smtpd"
    printf 'mailstack purged (%s)\n' "$R"
}

cmd_status() {
    local ok=0 pid
    if pid=$(dovecot_pid) && port_open "$IMAP_PORT"; then
        printf 'imap  running (pid %s) on 127.0.0.1:%s, imaps :%s\n' "$pid" "$IMAP_PORT" "$IMAPS_PORT"
    else
        printf 'imap  stopped\n'
        ok=3
    fi
    if pid=$(smtpd_pid) && port_open "$SMTP_PORT"; then
        printf 'smtp  running (pid %s) on 127.0.0.1:%s\n' "$pid" "$SMTP_PORT"
    else
        printf 'smtp  stopped\n'
        ok=3
    fi
    printf 'dir   %s\n' "$R"
    return $ok
}

require_configs() {
    [[ -f $DOVECOT_CONF && -f $SMTPD_CONF ]] || die "no stack configured in $R: run \`mailstack.sh up\` first"
}

main() {
    (($# == 1)) || usage
    validate_port MAILSTACK_IMAP_PORT "$IMAP_PORT"
    validate_port MAILSTACK_IMAPS_PORT "$IMAPS_PORT"
    validate_port MAILSTACK_SMTP_PORT "$SMTP_PORT"
    case $1 in
    up | down | purge | status | stop-imap | start-imap | stop-smtp | start-smtp) ;;
    *) usage ;;
    esac
    if [[ $1 == status ]]; then
        # A stopped stack is an answer, not an error.
        trap - ERR
        local status=0
        cmd_status || status=$?
        return "$status"
    fi
    mkdir -p "$R" "$LOG"
    # One command at a time per stack; parallel tests queue here.
    exec 9>"$R/lock"
    flock -w 300 9 || die "timed out waiting for the lock $R/lock"
    case $1 in
    up) cmd_up ;;
    down) cmd_down ;;
    purge) cmd_purge ;;
    stop-imap) stop_imap ;;
    start-imap) require_configs && start_imap ;;
    stop-smtp) stop_smtp ;;
    start-smtp) require_configs && start_smtp && reload_smtp_tables ;;
    esac
}

main "$@"
