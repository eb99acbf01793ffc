#!/usr/bin/env bash
# Debian packages the test suite talks to (the Makefile's system-deps target lists them).
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
# The tests start private instances of every server they talk to (config, data and sockets in a
# temporary directory, free loopback ports): dovecot (queue/lmtp, auth/auth_imap), clamd (virus/*),
# spamd (spamassassin), redis-server (the state store), rspamd and opendkim (rspamd, milter), slapd
# and mariadbd (auth/auth_ldap_bind, auth/auth_vpopmail_sql). Installing a package may enable and
# start a system-wide daemon (clamav-freshclam would even download signatures): stop those and keep
# them from starting at boot. cvm and p0f start no service.
disable_service() {
    if [ -d /run/systemd/system ]; then
        systemctl disable --now "$1.service" >/dev/null 2>&1 || true
        [ "$1" = dovecot ] && systemctl disable --now dovecot.socket >/dev/null 2>&1 || true
    else
        invoke-rc.d "$1" stop >/dev/null 2>&1 || true
        update-rc.d "$1" disable >/dev/null 2>&1 || true
    fi
}
# package -> the services it brings
declare -A services=(
    [dovecot-lmtpd]=dovecot [dovecot-imapd]=dovecot [clamav-daemon]="clamav-daemon clamav-freshclam"
    [clamav]=clamav-freshclam [spamd]=spamd [redis-server]=redis-server [rspamd]=rspamd
    [opendkim]=opendkim [slapd]=slapd [mariadb-server]=mariadb
)
for pkg in "${needed[@]:-}"; do
    [ -n "$pkg" ] || continue
    for service in ${services[$pkg]:-}; do
        disable_service "$service"
    done
done
