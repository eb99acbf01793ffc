"""http_config - take settings from web servers, without ever waiting for them.

Hook: config. Each setting `name` the daemon or a plugin looks up is fetched
as `<url><name>` from the base URLs given as arguments, tried in order:

    http_config http://config.example.org/qpsmtpd/ http://backup.example.org/qp?config=

looks `smtpgreeting` up as http://config.example.org/qpsmtpd/smtpgreeting
and, if that has no value, as http://backup.example.org/qp?config=smtpgreeting.
The first URL whose answer has a value wins; its values are the setting
(OK), in place of the config files.

An answer is read like a config file without `$include`: one value per line,
surrounding whitespace trimmed, blank lines and lines starting with `#`
skipped. A URL answering 404 or 410, or a success with no value, does not have
the setting: the next URL is tried. Any other status (500, 403, ...), a
connection error or no complete answer within the time-out is an error at
that URL, and the next URL is tried as well. When no URL has the setting:
without any error the setting does not exist on the web (DECLINED: it is read
from the config files); with an error the result is unknown, see below.

Config lookups must answer at once, so the plugin answers from a cache and
fetches in the background (Twisted's HTTP client, never blocking the
process):
- a setting never fetched yet answers DECLINED (the config files decide) and
  starts a fetch, so the lookups after it, once the answer is in, get the web
  value;
- a fetched setting is served for `cache` seconds; the first lookup after that
  still gets the cached answer and starts a new fetch in the background;
- when a fetch fails, the last good answer stays in use (stale-if-error) and
  the next attempt is made `cache` seconds later. The failure is logged once
  at LOGWARN, with the reason for each URL, and the recovery once at LOGINFO;
- one fetch per setting at a time, each URL at most `timeout` seconds.
Redirects are followed. Names are appended percent-encoded as needed (plain
setting names are unchanged).

Processes: plugins are loaded in the master process, which has no event
loop, so nothing is fetched at start-up. Every child process keeps its own
cache and fetches each setting at its first lookup of it; until that answer
is in, the child uses the config files. Settings the daemon reads once when a
child starts (databytes, timeout, timeoutsmtpd, max_data_line_length,
forbid_bare_newline) are therefore always read from the files; settings read
per session or per message (me, smtpgreeting, and those of most plugins)
follow the web server. A reload (HUP) starts new children with empty caches.

Arguments (URLs, and options written `key=value`, in any order):
    URL          a base URL, http:// or https:// (https needs Twisted's TLS
                 support installed); at least one. A URL may contain `=`
                 (`...?config=`): a word starting with http:// or https:// is
                 always a URL.
    timeout=N    seconds each URL has to answer completely, default 5.
    cache=N      seconds a fetched answer is used before it is fetched again,
                 default 60; 0 fetches again at every lookup (in the
                 background, so each lookup gets the previous answer).
    loglevel N   the standard per-plugin log level adjustment
                 (`loglevel=N` works too).
Anything else stops start-up.

Differences from qpsmtpd, all deliberate: qpsmtpd fetched every lookup,
waiting for the server (a slow server stalled every session of the process)
and treating any failure as "no value"; values are trimmed like config file
lines (qpsmtpd kept surrounding blanks, and dropped a line `0`).

Example config/plugins line:
    http_config http://127.0.0.1:8080/qpsmtpd/ timeout=3 cache=300
"""

import importlib.util
import re
import time
from urllib.parse import quote

from twisted.internet import defer

from qpsmtpd_py.constants import DECLINED, LOGDEBUG, LOGINFO, LOGWARN, OK
from qpsmtpd_py.log import current_session
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 5.0
DEFAULT_CACHE = 60.0
NOT_HERE = (404, 410)
_URL = re.compile(r"^https?://[^/?#\s]+", re.IGNORECASE)
_OPTION = re.compile(r"^([A-Za-z_]+)=(.*)$")
_NUMBER = re.compile(r"^\d+(?:\.\d*)?$|^\.\d+$")
_LOGLEVEL = re.compile(r"^(?:[0-7]|[+-]\d)$")
_WHITESPACE = " \t\n\r\f\v"
_LINES = re.compile(r"\r\n|\r|\n")


class NoReactor(RuntimeError):
    """Asked to fetch in the master process, which has no event loop."""


class FetchFailed(Exception):
    """No URL had the setting, and at least one of them failed."""

    def __init__(self, errors):
        super().__init__("; ".join(errors))
        self.errors = errors


def parse_arguments(args):
    """(urls, timeout, cache, loglevel or None) from the config/plugins words."""
    urls, options = [], {}
    words = list(args)
    while words:
        word = words.pop(0)
        if _URL.match(word):
            urls.append(word)
            continue
        if word == "loglevel" and words:
            options["loglevel"] = words.pop(0)
            continue
        option = _OPTION.match(word)
        if option is None:
            raise PluginError(f"{word!r} is neither an http:// or https:// URL nor an option "
                              "(timeout=N, cache=N, loglevel N)")
        key, value = option.group(1), option.group(2)
        if key not in ("timeout", "cache", "loglevel"):
            raise PluginError(f"unknown option {key!r}: the options are timeout=N, cache=N and loglevel=N")
        options[key] = value
    if not urls:
        raise PluginError("give at least one base URL, as in `http_config http://config.example.org/qpsmtpd/`")
    timeout = _seconds(options, "timeout", DEFAULT_TIMEOUT)
    if timeout <= 0:
        raise PluginError("timeout must be more than 0 seconds")
    cache = _seconds(options, "cache", DEFAULT_CACHE)
    loglevel = options.get("loglevel")
    if loglevel is not None and not _LOGLEVEL.match(loglevel):
        raise PluginError(f"loglevel must be 0-7, +N or -N, not {loglevel!r}")
    return urls, timeout, cache, loglevel


def _seconds(options, key, default):
    value = options.get(key)
    if value is None:
        return default
    if not _NUMBER.match(value):
        raise PluginError(f"{key} must be a number of seconds, not {value!r}")
    return float(value)


def parse_body(body):
    """The values of an answer, read like a config file (without `$include`)."""
    text = body.decode("utf-8", "surrogateescape")
    values = []
    for line in _LINES.split(text):
        line = line.strip(_WHITESPACE)
        if line and not line.startswith("#"):
            values.append(line)
    return values


def describe(exc, timeout):
    """A short reason for a failed request, for the log."""
    if isinstance(exc, (defer.TimeoutError, defer.CancelledError)):
        return f"no answer within {timeout:g} s"
    reasons = getattr(exc, "reasons", None)  # twisted.web's ResponseFailed & co.
    if reasons:
        return "; ".join(describe(reason.value, timeout) for reason in reasons)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def running_reactor():
    """The reactor of this child process; NoReactor in the master."""
    from twisted.internet import reactor

    try:
        reactor.callLater  # noqa: B018  (the master's stand-in raises here)
    except RuntimeError as exc:
        raise NoReactor(str(exc)) from exc
    return reactor


class HttpConfig(Plugin):
    def init(self, qp, *args):
        self.urls, self.timeout, self.cache, loglevel = parse_arguments(args)
        self.args = {} if loglevel is None else {"loglevel": loglevel}
        if any(url.lower().startswith("https:") for url in self.urls) and importlib.util.find_spec("OpenSSL") is None:
            raise PluginError("https URLs need Twisted's TLS support: install pyOpenSSL and service_identity "
                              "(twisted[tls]), or use http://")
        # Tests replace these: the clock, and fetch_url(url, timeout) -> Deferred (status, body).
        self.clock = time.monotonic
        self.fetch_url = self.http_get
        self._agent = None
        self._values = {}  # name -> tuple of values, or None: no URL has it
        self._due = {}  # name -> clock() time after which it is fetched again
        self._fetching = set()
        self._failing = set()

    # -- the hook -----------------------------------------------------------------------
    def hook_config(self, transaction, name):
        if name not in self._fetching and self.clock() >= self._due.get(name, float("-inf")):
            self.refresh(name)
        values = self._values.get(name)
        if not values:
            self.log(LOGDEBUG, f"{name}: {'no value on the web' if name in self._values else 'not fetched yet'}")
            return DECLINED
        return (OK, *values)

    # -- fetching ---------------------------------------------------------------------
    def refresh(self, name):
        """Fetch `name` in the background; the cache is updated when the answer is in."""
        self._fetching.add(name)
        d = defer.ensureDeferred(self.fetch_name(name))
        d.addCallbacks(self._fetched, self._failed, callbackArgs=(name,), errbackArgs=(name,))

    async def fetch_name(self, name):
        """The values of the first URL that has `name`, None if none has; FetchFailed on errors."""
        errors = []
        for base in self.urls:
            url = base + quote(name, safe="/")
            try:
                status, body = await self.fetch_url(url, self.timeout)
            except NoReactor:
                raise
            except Exception as exc:  # every kind of network failure is an error at this URL
                errors.append(f"{url}: {describe(exc, self.timeout)}")
                continue
            if status in NOT_HERE:
                continue
            if not 200 <= status < 300:
                errors.append(f"{url}: HTTP {status}")
                continue
            values = parse_body(body)
            if values:
                if errors:
                    self.log(LOGDEBUG, f"{name} from {url} after errors: {'; '.join(errors)}")
                return values
        if errors:
            raise FetchFailed(errors)
        return None

    def background_log(self, level, message):
        """Log from an answer's callback: no session is running (the last one's id would mislead)."""
        token = current_session.set(None)
        try:
            self.log(level, message)
        finally:
            current_session.reset(token)

    def _fetched(self, values, name):
        self._fetching.discard(name)
        self._due[name] = self.clock() + self.cache
        self._values[name] = None if values is None else tuple(values)
        if name in self._failing:
            self._failing.discard(name)
            self.background_log(LOGINFO, f"{name}: the web servers answer again")
        self.background_log(LOGDEBUG, f"{name}: {'not on the web' if values is None else f'{len(values)} value(s)'}")

    def _failed(self, failure, name):
        self._fetching.discard(name)
        if failure.check(NoReactor):
            self.background_log(LOGDEBUG, f"{name}: not fetched in the master process")
            return
        self._due[name] = self.clock() + self.cache
        if name in self._failing:
            self.background_log(LOGDEBUG, f"{name}: still failing: {failure.getErrorMessage()}")
            return
        self._failing.add(name)
        keeping = "keeping the last answer" if name in self._values else "using the config files"
        self.background_log(LOGWARN, f"{name}: fetch failed ({failure.getErrorMessage()}); {keeping} "
                                     f"and trying again every {self.cache:g} s")

    def http_get(self, url, timeout):
        """GET `url` with Twisted's client: a Deferred firing with (status, body)."""
        from twisted.web.client import Agent, RedirectAgent, readBody
        from twisted.web.http_headers import Headers

        reactor = running_reactor()
        if self._agent is None:
            self._agent = RedirectAgent(Agent(reactor, connectTimeout=timeout), redirectLimit=5)
        agent_name = f"{self.qp.software}/{self.qp.version} http_config".encode("ascii", "replace")
        d = self._agent.request(b"GET", url.encode("ascii"), Headers({b"User-Agent": [agent_name]}))

        def got_response(response):
            body = readBody(response)
            body.addCallback(lambda data: (response.code, data))
            return body

        d.addCallback(got_response)
        d.addTimeout(timeout, reactor)
        return d
