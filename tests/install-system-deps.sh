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
# dovecot-imapd (auth/auth_imap) likewise: the tests start their own Dovecot with IMAP.
if [[ " ${needed[*]:-} " == *" dovecot-lmtpd "* || " ${needed[*]:-} " == *" dovecot-imapd "* ]]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now dovecot.service dovecot.socket >/dev/null 2>&1 || true
    else
        invoke-rc.d dovecot stop >/dev/null 2>&1 || true
        update-rc.d dovecot disable >/dev/null 2>&1 || true
    fi
fi
# clamav-daemon, clamav: the virus/clamdscan and virus/clamav tests start their own clamd (and run
# clamscan) with a signature database they write. The package starts a system clamd and freshclam,
# which would download signatures: stop both and keep them from starting at boot.
if [[ " ${needed[*]:-} " == *" clamav-daemon "* || " ${needed[*]:-} " == *" clamav "* ]]; then
    for service in clamav-daemon clamav-freshclam; do
        if [ -d /run/systemd/system ]; then
            systemctl disable --now "$service.service" >/dev/null 2>&1 || true
        else
            invoke-rc.d "$service" stop >/dev/null 2>&1 || true
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    done
fi
# spamd (with spamassassin): the spamassassin tests start their own spamd (site config in a
# temporary directory, free loopback port and unix socket). The package enables a system-wide
# spamd on port 783 that the tests do not use: stop it and keep it from starting at boot.
if [[ " ${needed[*]:-} " == *" spamd "* ]]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now spamd.service >/dev/null 2>&1 || true
    else
        invoke-rc.d spamd stop >/dev/null 2>&1 || true
        update-rc.d spamd disable >/dev/null 2>&1 || true
    fi
fi
# redis-server: the greylisting/karma store tests start their own redis-server (temporary
# directory, free loopback port, no persistence). The package enables and starts a system-wide
# one on port 6379 that the tests do not use: stop it and keep it from starting at boot.
if [[ " ${needed[*]:-} " == *" redis-server "* ]]; then
    if [ -d /run/systemd/system ]; then
        systemctl disable --now redis-server.service >/dev/null 2>&1 || true
    else
        invoke-rc.d redis-server stop >/dev/null 2>&1 || true
        update-rc.d redis-server disable >/dev/null 2>&1 || true
    fi
fi
# rspamd, opendkim: the rspamd and milter tests start their own rspamd (config, databases and
# sockets in a temporary directory, free loopback ports) and opendkim (key generated per test with
# opendkim-tools). The packages enable system-wide daemons the tests do not use: stop them and
# keep them from starting at boot.
for service in rspamd opendkim; do
    if [[ " ${needed[*]:-} " == *" $service "* ]]; then
        if [ -d /run/systemd/system ]; then
            systemctl disable --now "$service.service" >/dev/null 2>&1 || true
        else
            invoke-rc.d "$service" stop >/dev/null 2>&1 || true
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    fi
done
# slapd, mariadb-server: the auth/auth_ldap_bind and auth/auth_vpopmail_sql tests start their own slapd
# (slapd.conf, database and test user in a temporary directory) and mariadbd (data directory made by
# mariadb-install-db there), on free loopback ports. The packages enable and start system-wide
# servers (slapd on port 389, MariaDB on 3306) the tests do not use: stop them and keep them from
# starting at boot. cvm (auth/auth_cvm_unix_local: cvm-pwfile) starts no service.
for service in slapd mariadb; do
    package=$service
    [ "$service" = mariadb ] && package=mariadb-server
    if [[ " ${needed[*]:-} " == *" $package "* ]]; then
        if [ -d /run/systemd/system ]; then
            systemctl disable --now "$service.service" >/dev/null 2>&1 || true
        else
            invoke-rc.d "$service" stop >/dev/null 2>&1 || true
            update-rc.d "$service" disable >/dev/null 2>&1 || true
        fi
    fi
done
