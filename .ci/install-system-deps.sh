#!/usr/bin/env bash
# Installs the Debian packages the tests talk to (real peers and servers), idempotently.
# Postfix is preseeded with "No configuration" so no system instance can start; tests run
# their own instances with their own config directories on loopback ports.
set -euo pipefail
PKGS="postgresql postfix swaks libnet-ssleay-perl libio-socket-ssl-perl dovecot-imapd dovecot-pop3d dovecot-lmtpd dovecot-sieve isync fetchmail offlineimap3 getmail6 systemd fail2ban rspamd redis-server pebble postsrsd sieve-connect"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "install-system-deps: need root to install:$missing" >&2
        exit 1
    fi
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
# An install may have started default-config daemons on machines without policy-rc.d.
if [ -f /etc/postfix/main.cf ] && postfix status >/dev/null 2>&1; then postfix stop || true; fi
if [ -f /run/dovecot/master.pid ] && kill -0 "$(cat /run/dovecot/master.pid)" 2>/dev/null; then dovecot stop || true; fi

# Dovecot's IMAP tester (vendored source; builds once, then a no-op).
bash "$(dirname "$0")/imaptest/build.sh"

if command -v fail2ban-client >/dev/null && pgrep -x fail2ban-server >/dev/null 2>&1; then fail2ban-client stop >/dev/null 2>&1 || true; fi
echo "system deps: ok"
