#!/usr/bin/env bash
# Debian packages the test suite talks to (the Makefile's system-deps target lists them).
# Later issues add real peers here (postfix, redis-server, spamassassin, clamav-daemon).
# Recommends are not installed: `runit` recommends `runit-run`, which would enable a
# system-wide runsvdir service; the tests only need the binaries. List what a test needs.
set -euo pipefail
needed=()
for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || needed+=("$pkg")
done
# postfix: for smtp-sink and for the private Postfix instances tests start (as root). It would
# replace an MTA the machine already has (they all provide mail-transport-agent), so it is left
# out then: those tests skip.
if [[ " ${needed[*]:-} " == *" postfix "* ]]; then
    if [ -e /usr/sbin/sendmail ]; then
        echo "another MTA is installed: not installing postfix (the smtp-sink tests will skip)" >&2
        others=()
        for pkg in "${needed[@]}"; do [ "$pkg" = postfix ] || others+=("$pkg"); done
        needed=("${others[@]}")
    else
        # "No configuration" writes no /etc/postfix/main.cf, and without it Postfix never
        # starts (the init script exits, the systemd unit has ConditionPathExists=main.cf):
        # nothing ends up listening on port 25.
        echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    fi
fi
if [ ${#needed[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${needed[@]}"
fi
# dovecot-lmtpd: the queue/lmtp tests start their own Dovecot (config, sockets, Maildirs in a
# temporary directory, LMTP on a free loopback port). Installing dovecot-core enables and
# starts a system-wide dovecot; with only LMTP it listens on a unix socket, no TCP port, but
# the tests have no use for it: stop it and keep it from starting at boot.
if [[ " ${needed[*]:-} " == *" dovecot-lmtpd "* ]]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true
    else
        invoke-rc.d dovecot stop >/dev/null 2>&1 || true
        update-rc.d dovecot disable >/dev/null 2>&1 || true
    fi
fi
