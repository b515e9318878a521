#!/usr/bin/env bash
# build.sh [SRC_DIR] - builds Dovecot's IMAP compliance and stress tester, imaptest (MIT
# licensed, see README.md here), against Debian 12's dovecot-dev and installs it as
# /usr/local/bin/imaptest, its scripted tests in /usr/local/share/imaptest/tests.
# Idempotent (does nothing when both are there); about a minute otherwise.
#
# Without SRC_DIR it builds the copy beside this script (imaptest-0de0dbf.tar.gz: github
# dovecot/imaptest at commit 0de0dbf), so CI needs no network beyond apt.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -x /usr/local/bin/imaptest ] && [ -d /usr/local/share/imaptest/tests ] && [ -z "${1:-}" ]; then
    echo "imaptest: already installed (/usr/local/bin/imaptest)"; exit 0
fi
[ "$(id -u)" = 0 ] || { echo "imaptest/build.sh: run as root (apt-get, /usr/local)" >&2; exit 1; }
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    dovecot-dev autoconf automake libtool pkg-config build-essential >/dev/null
src=${1:-}
if [ -z "$src" ]; then
    src=$(mktemp -d)
    trap 'rm -rf "$src"' EXIT
    tar -xzf "$here/imaptest-0de0dbf.tar.gz" -C "$src"
fi
cd "$src"
# dovecot-dev 2.3.19's imap_parser_create() takes a fourth argument (parser params).
for f in src/commands.c src/imap-client.c src/test-parser.c; do
    grep -q 'imap_parser_params' "$f" || sed -i 's/imap_parser_create(\([^;]*\), (size_t)-1)/imap_parser_create(\1, (size_t)-1, \&(struct imap_parser_params){0})/' "$f"
done
[ -x configure ] || ./autogen.sh >/dev/null 2>&1
./configure -q --with-dovecot=/usr/lib/dovecot LDFLAGS=-Wl,-rpath,/usr/lib/dovecot >/dev/null
make -s -j"$(nproc)" >/dev/null 2>&1
install -m 0755 src/imaptest /usr/local/bin/imaptest
rm -rf /usr/local/share/imaptest/tests && mkdir -p /usr/local/share/imaptest && cp -r src/tests /usr/local/share/imaptest/tests
echo "imaptest: installed /usr/local/bin/imaptest; tests in /usr/local/share/imaptest/tests"
