# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 2525

.PHONY: run test venv system-deps lint clean

$(BIN)/qpsmtpd-py-prefork: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(BIN)/qpsmtpd-py-prefork

# Starts the daemon in the foreground on the embedded default config:
# 127.0.0.1:$(PORT), mail for localhost and `me` stored in var/Maildir.
run: venv
	mkdir -p var
	$(BIN)/qpsmtpd-py-prefork --config-dir config --listen-address 127.0.0.1 --port $(PORT) --children 2

# Installs what the test suite needs (Debian packages, the venv) and runs all of it.
test: venv system-deps
	$(BIN)/python -m pytest -q tests

# Debian packages the tests use: procps (pgrep/ps); daemontools and runit (the run/ service
# directories); postfix (smtp-sink, private Postfix instances); openssl (test certificates);
# dovecot-lmtpd (queue/lmtp); libmail-dkim-perl and libmail-dmarc-perl (cross-checks of dkim,
# domainkeys, dmarc); clamav-daemon and clamav (virus/clamdscan, virus/clamav); p0f (ident/p0f);
# redis-server (the Redis state store); spamd (spamassassin); rspamd, opendkim and opendkim-tools
# (rspamd, milter); cvm, slapd, mariadb-server, dovecot-imapd (the auth plugins). Tests start private
# instances on loopback; the system services are disabled.
system-deps:
	@bash tests/install-system-deps.sh procps daemontools runit postfix openssl dovecot-lmtpd \
		libmail-dkim-perl libmail-dmarc-perl clamav-daemon clamav p0f redis-server spamd rspamd opendkim opendkim-tools \
		cvm slapd mariadb-server dovecot-imapd

lint: venv
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check qpsmtpd_py plugins tests bench

clean:
	rm -rf $(VENV) var build *.egg-info
