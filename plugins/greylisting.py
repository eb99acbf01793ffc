"""greylisting - delay mail from clients not seen before (RFC 6647).

Hooks: mail (or rcpt, when the recipient is part of the triplet or
`per_recipient` is on), and data (for deferrals kept until DATA).

The first time a "triplet" is seen (by default only the client's IP; the
sender and the recipient can be added), the message is refused with a
temporary error, `450 This mail is temporarily denied` (451 when the deferral
waits for DATA). A real mail server tries again later; once `black_timeout`
seconds have passed since that first attempt, the retry is accepted and the
triplet is white: it passes at once for `white_timeout` seconds after each
delivery. Spam software that does not retry never gets through.

Not greylisted (never even recorded): relay clients, whitelisted hosts and
senders (`is_immune`), TLS sessions, clients that do not match the `p0f`
criteria, clients from a `geoip` country, and clients listed in the files
named in `config/greylist_exclude_files`.

Arguments (key value pairs; `config/denysoft_greylist` may hold the same
pairs, one `key value` per line, and the arguments override them):
    remote_ip 0|1      the client's IP is part of the triplet. Default: 1.
    sender 0|1         the envelope sender is part of it. Default: 0.
    recipient 0|1      the (first) recipient is part of it; greylisting then
                       runs at RCPT. Default: 0.
    black_timeout N    seconds a new triplet is refused. Default: 3000 (50m).
    grey_timeout N     ignored: qpsmtpd dropped the grey period long ago.
    white_timeout N    seconds a white triplet stays white after its last
                       delivery, and a black one is remembered. Default:
                       3110400 (36 days).
    deny_late 0|1      1: do not refuse at MAIL/RCPT but at DATA (the
                       client learns every recipient's fate first; the
                       message is `451`). Default: 0.
    reject 0|1         0: record and log only, refuse nothing (seed the
                       database for a week or two first). Default: 1.
    per_recipient 0|1  run at RCPT and read `denysoft_greylist` per
                       recipient (through the user_config hook, e.g. from
                       user_config), so black_timeout and white_timeout can
                       differ per recipient. Default: 0.
    p0f K,V[,K,V...]   greylist only clients whose p0f fingerprint (the
                       connection note `p0f`, set by ident/p0f) matches one
                       of: genre (pattern), detail (pattern), link
                       (pattern), distance (more hops than V), uptime (less
                       than V). Others, and clients without the note, pass.
                       Example: `p0f genre,windows`.
    geoip CC[,CC...]   do not greylist clients of these countries (the
                       connection note `geoip_country`, set by ident/geoip).
    db_dir DIR         directory of the SQLite database `greylist.sqlite`.
                       Default: `var/db` beside the spool dir.
    redis HOST[:PORT]  keep the greylist in Redis instead (also
                       `redis://host:port/db`), to share it between several
                       MX hosts. Keys are `greylist:<key>`.
    upgrade 0|1        rewrite keys of qpsmtpd before 0.12 (dotted IPs) to
                       integers, once per child at first use. Default: 0.
    nfslock 0|1        accepted and ignored (SQLite and Redis need no lock
                       file).
    loglevel N         as for every plugin.

config/greylist_exclude_files names files (relative to the config dir, or
absolute) of clients never greylisted, one per line (postgrey's
whitelist_clients format, `#` comments): an IP address, an exact host name
(the client's reverse DNS name), or `/pattern/` matched against that name.

The database: key `<client IP as an integer>[:<sender>][:<recipient>]`,
value `<first seen>:1:<deferrals>:<deliveries>`, qpsmtpd's formats, so
`karma_tool import` can bring an old greylist.dbm along. An entry disappears
`white_timeout` seconds after its last change (qpsmtpd pruned at start).
When the store cannot answer (Redis down, a locked file past its 5 s
time-out) the client is let through and the error logged.

Example config/plugins lines:
    greylisting
    greylisting reject 0
    greylisting black_timeout 600 sender 1 redis 10.0.0.5:6379
    greylisting p0f genre,windows geoip US,CA

Differences from qpsmtpd:
- TLS sessions are not greylisted, as qpsmtpd's manual said (its code forgot);
- every line of `denysoft_greylist` is read at load (qpsmtpd read the first);
- `deny_late` also applies at RCPT (qpsmtpd ignored it there); a null sender
  is deferred to DATA at RCPT either way, as in qpsmtpd;
- the p0f `detail` criterion matches (qpsmtpd accepted and ignored it);
- bad arguments, a triplet with no part, and an unreadable exclude file stop
  start-up with a message (qpsmtpd logged them and went on);
- SQLite or Redis instead of a DBM file, so `nfslock` has no use.
"""

from __future__ import annotations

import ipaddress
import re
import time
from pathlib import Path

from qpsmtpd_py.constants import DECLINED, DENYSOFT, LOGDEBUG, LOGERROR, LOGINFO, LOGNOTICE, LOGWARN
from qpsmtpd_py.perl_regex import perl_regex
from qpsmtpd_py.plugin import Plugin, PluginError
from qpsmtpd_py.state import StoreError, StoreSettings

DENY_MESSAGE = "This mail is temporarily denied"
DEFAULTS = {
    "remote_ip": "1", "sender": "0", "recipient": "0", "reject": "1",
    "black_timeout": str(50 * 60), "white_timeout": str(36 * 24 * 3600),
}
FLAGS = ("remote_ip", "sender", "recipient", "deny_late", "per_recipient", "upgrade", "nfslock")
TIMEOUTS = ("black_timeout", "white_timeout", "grey_timeout")
KNOWN = (*FLAGS, *TIMEOUTS, "reject", "p0f", "geoip", "db_dir", "redis", "loglevel")
P0F_KEYS = ("genre", "detail", "uptime", "link", "distance")


def decide(value: str | None, now: float, black_timeout: float, white_timeout: float) -> tuple[bool, str, str]:
    """One greylisting decision: (passes, the value to store, why) from the stored value.

    The black period counts from the first sighting; a white entry is refreshed
    by every delivery and goes black again once stale.
    """
    if not value:
        return False, f"{int(now)}:1:0:0", "fail: initial DENYSOFT, unknown"
    first_seen, new, black, white = (int(part or 0) for part in (value.split(":") + ["0"] * 4)[:4])
    if white:
        if now - first_seen < white_timeout:
            return True, f"{int(now)}:{new}:{black}:{white + 1}", f"pass: white, {white + 1} deliveries"
    if now - first_seen < black_timeout:
        return False, f"{first_seen}:{new}:{black + 1}:0", f"fail: black DENYSOFT - {black + 1} deferred connections"
    return True, f"{first_seen}:{new}:{black}:1", "pass: timed out (grey)"


def ip_key(ip: str) -> str:
    """The client's IP as qpsmtpd's Net::IP intip: a decimal integer, IPv4 or IPv6."""
    return str(int(ipaddress.ip_address(ip)))


def truthy(text: str | None) -> bool:
    """Perl's idea of a true argument: anything but empty and 0."""
    return bool(text) and text != "0"


class Greylisting(Plugin):
    reject_values = re.compile(r"^(?:0|1)$")
    reject_help = "0 or 1"
    clock = staticmethod(time.time)  # tests put a fake clock here

    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"arguments come in pairs (black_timeout 600 sender 1), not `{' '.join(args)}`")
        self.settings = self._merged_settings(qp)
        for key in self.settings:
            if key not in KNOWN:
                self.log(LOGWARN, f"ignoring unknown argument {key!r}")
        if not any(truthy(self.settings.get(part)) for part in ("remote_ip", "sender", "recipient")):
            raise PluginError("the triplet is empty: enable one of remote_ip, sender or recipient")
        self.timeouts = {name: self._seconds(self.settings, name) for name in ("black_timeout", "white_timeout")}
        self.p0f = parse_p0f(self.settings.get("p0f"))
        self.countries = {c.strip().lower() for c in (self.settings.get("geoip") or "").split(",") if c.strip()}
        self.exclusions = Exclusions.from_files(qp)
        try:
            self.store_settings = StoreSettings.from_args("greylist", self.settings, qp.spool_dir)
        except ValueError as exc:
            raise PluginError(str(exc)) from None
        self._store = None
        self.per_rcpt = truthy(self.settings.get("recipient")) or truthy(self.settings.get("per_recipient"))
        self.register_hook("rcpt" if self.per_rcpt else "mail", self.rcpt_handler if self.per_rcpt
                           else self.mail_handler)
        self.register_hook("data", self.data_handler)

    def _merged_settings(self, qp) -> dict[str, str]:
        settings = dict(DEFAULTS)
        settings.update(pairs(qp.config_list("denysoft_greylist")))
        settings.update(self.args)
        if settings.get("reject") not in ("0", "1"):
            raise PluginError(f"reject must be 0 or 1, not {settings.get('reject')!r}")
        for flag in FLAGS:
            if settings.get(flag, "0") not in ("0", "1", ""):
                raise PluginError(f"{flag} must be 0 or 1, not {settings[flag]!r}")
        for name in TIMEOUTS:
            if name in settings:
                self._seconds(settings, name)
        return settings

    @staticmethod
    def _seconds(settings: dict[str, str], name: str) -> float:
        text = settings.get(name) or DEFAULTS.get(name, "0")
        try:
            seconds = float(text)
        except ValueError:
            seconds = -1
        if seconds < 0:
            raise PluginError(f"{name} must be a number of seconds, not {text!r}")
        return seconds

    # -- hooks --------------------------------------------------------------------------------
    async def mail_handler(self, transaction, sender, *args):
        code, message = await self.greylist(transaction, sender, None, self.timeouts)
        if code != DENYSOFT:
            return DECLINED
        if not truthy(self.settings.get("deny_late")):
            return DENYSOFT, message
        transaction.notes["greylist"] = message
        return DECLINED

    async def rcpt_handler(self, transaction, recipient, *args):
        timeouts = self.timeouts
        if truthy(self.settings.get("per_recipient")):
            timeouts = self.recipient_timeouts(recipient)
        sender = transaction.sender
        code, message = await self.greylist(transaction, sender, recipient, timeouts)
        if code != DENYSOFT:
            return DECLINED
        if sender is not None and not sender.is_null and not truthy(self.settings.get("deny_late")):
            return DENYSOFT, message
        transaction.notes["greylist"] = message  # a bounce: refuse at DATA, once every recipient is known
        return DECLINED

    def data_handler(self, transaction):
        message = transaction.notes.get("greylist")
        if not message:
            return DECLINED
        if (transaction.notes.get("whitelistrcpt") or 0) == len(transaction.recipients):
            self.log(LOGWARN, "skip: all recipients whitelisted")
            return DECLINED
        return DENYSOFT, message

    # -- the decision ----------------------------------------------------------------------------
    async def greylist(self, transaction, sender, recipient, timeouts):
        """(DENYSOFT, message) for a triplet to defer now, else (DECLINED, "")."""
        if self.exempt():
            return DECLINED, ""
        key = self.key(sender, recipient)
        try:
            store = await self.store()
            passes, value, why = decide(await store.get(key), self.clock(), timeouts["black_timeout"],
                                        timeouts["white_timeout"])
            await store.set(key, value, ttl=timeouts["white_timeout"])
        except StoreError as exc:
            self.log(LOGERROR, f"UNABLE TO OBTAIN GREYLIST RESULT: {exc}")
            return DECLINED, ""
        self.log(LOGINFO if passes else LOGWARN, why)
        if passes:
            return DECLINED, ""
        if self.settings["reject"] == "0":
            return DECLINED, ""
        return DENYSOFT, DENY_MESSAGE

    def key(self, sender, recipient) -> str:
        parts = []
        if truthy(self.settings.get("remote_ip")):
            parts.append(ip_key(self.connection.remote_ip))
        if truthy(self.settings.get("sender")):
            parts.append(sender.address() if sender is not None else "")
        if recipient is not None and truthy(self.settings.get("recipient")):
            parts.append(recipient.address())
        return ":".join(parts)

    def recipient_timeouts(self, recipient) -> dict[str, float]:
        merged = dict(self.settings)
        merged.update(pairs(self.qp.user_config(recipient, "denysoft_greylist")))
        try:
            return {name: self._seconds(merged, name) for name in ("black_timeout", "white_timeout")}
        except PluginError as exc:
            self.log(LOGERROR, f"denysoft_greylist for {recipient.address()}: {exc}; using the plugin's")
            return self.timeouts

    def exempt(self) -> bool:
        connection = self.connection
        if self.is_immune():
            return True
        if connection.notes.get("tls_enabled"):
            self.log(LOGINFO, "skip: TLS session")
            return True
        if self.p0f and not self.p0f_match(connection.notes.get("p0f")):
            return True
        if self.countries and self.geoip_match(connection.notes.get("geoip_country")):
            return True
        if self.exclusions.match(connection.remote_ip, connection.remote_host):
            self.log(LOGINFO, "skip: in greylist_exclude_files")
            return True
        return False

    def p0f_match(self, p0f) -> bool:
        if not isinstance(p0f, dict):
            self.log(LOGERROR, "p0f info missing")
            return False
        for key, wanted in self.p0f:
            seen = p0f.get(key)
            if seen is None:
                continue
            if key in ("genre", "detail", "link") and wanted.search(str(seen)):
                self.log(LOGDEBUG, f"p0f {key} match ({wanted.pattern})")
                return True
            if key == "distance" and _number(seen) > wanted:
                self.log(LOGDEBUG, f"p0f distance match ({wanted})")
                return True
            if key == "uptime" and _number(seen) < wanted:
                self.log(LOGDEBUG, f"p0f uptime match ({wanted})")
                return True
        self.log(LOGINFO, "skip: no p0f match")
        return False

    def geoip_match(self, country) -> bool:
        if not country:
            self.log(LOGNOTICE, "skip: no geoip country")
            return False
        if str(country).lower() in self.countries:
            self.log(LOGINFO, f"pass: geoip country match ({country})")
            return True
        self.log(LOGINFO, f"skip: no geoip match ({country})")
        return False

    # -- the store ---------------------------------------------------------------------------
    async def store(self):
        """This child's store, opened on first use (never in the master)."""
        if self._store is None:
            self._store = self.store_settings.open(self.get_reactor(), clock=self.clock)
            if truthy(self.settings.get("upgrade")):
                await self.upgrade_keys(self._store)
        return self._store

    async def upgrade_keys(self, store) -> None:
        """qpsmtpd before 0.12 keyed by dotted IP: rewrite those keys as integers."""
        converted = 0
        for key, value in (await store.scan()).items():
            first, _, rest = key.partition(":")
            if first.isdigit():
                continue
            try:
                new_key = ":".join([ip_key(first), rest]) if rest else ip_key(first)
            except ValueError:
                continue
            await store.set(new_key, value, ttl=self.timeouts["white_timeout"])
            await store.delete(key)
            converted += 1
        self.log(LOGINFO, f"converted {converted} DB entries")


def pairs(lines: list[str]) -> dict[str, str]:
    """`key value` lines (config/denysoft_greylist) as a dict."""
    settings = {}
    for line in lines:
        key, _, value = line.strip().partition(" ")
        if key:
            settings[key] = value.strip()
    return settings


def parse_p0f(text: str | None) -> list[tuple[str, object]]:
    """`genre,windows,distance,3` -> [(key, pattern or number)]; PluginError on a bad one."""
    if not text:
        return []
    words = text.split(",")
    if len(words) % 2:
        raise PluginError(f"p0f takes key,value pairs (genre,windows,distance,3), not {text!r}")
    criteria: list[tuple[str, object]] = []
    for key, value in zip(words[::2], words[1::2], strict=True):
        if key not in P0F_KEYS:
            raise PluginError(f"p0f key {key!r} is not one of {', '.join(P0F_KEYS)}")
        if key in ("distance", "uptime"):
            try:
                criteria.append((key, float(value)))
            except ValueError:
                raise PluginError(f"p0f {key} must be a number, not {value!r}") from None
        else:
            try:
                criteria.append((key, perl_regex(value, re.IGNORECASE)))
            except re.error as exc:
                raise PluginError(f"p0f {key} pattern {value!r}: {exc}") from None
    return criteria


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


class Exclusions:
    """The clients of config/greylist_exclude_files: IPs, host names, /patterns/ on host names."""

    def __init__(self) -> None:
        self.ips: set[str] = set()
        self.hosts: set[str] = set()
        self.patterns: list[re.Pattern] = []

    @classmethod
    def from_files(cls, qp) -> Exclusions:
        exclusions = cls()
        listing = qp.config_reader.path_for("greylist_exclude_files")
        base = listing.parent if listing is not None else Path(".")
        for name in qp.config_list("greylist_exclude_files"):
            path = base / name
            try:
                lines = path.read_text(errors="replace").splitlines()
            except OSError as exc:
                raise PluginError(f"greylist_exclude_files names {path}, which cannot be read ({exc.strerror}); "
                                  "fix the name or remove the line") from None
            for number, line in enumerate(lines, 1):
                entry = re.sub(r"\s", "", line.split("#", 1)[0])
                if entry:
                    exclusions.add(entry, f"{path}:{number}")
        return exclusions

    def add(self, entry: str, where: str) -> None:
        if len(entry) > 1 and entry.startswith("/") and entry.endswith("/"):
            try:
                self.patterns.append(perl_regex(entry[1:-1]))
            except re.error as exc:
                raise PluginError(f"{where}: bad pattern {entry}: {exc}") from None
            return
        try:
            self.ips.add(str(ipaddress.ip_address(entry)))
        except ValueError:
            self.hosts.add(entry.lower())

    def match(self, ip: str, host: str | None) -> bool:
        if ip in self.ips:
            return True
        if not host or host.startswith("["):  # no reverse DNS name
            return False
        return host.lower() in self.hosts or any(p.search(host) for p in self.patterns)
