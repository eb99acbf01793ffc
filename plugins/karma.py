"""karma - remember how each client behaved; keep the naughty ones out for a while.

Hooks: pre-connection (read the client's history), connect (the penalty box),
mail and rcpt (envelope checks, recipient limit), data and data_post (very
bad karma), disconnect (record the verdict).

Other plugins judge a session by raising or lowering its karma (the
connection note `karma`, through `adjust_karma()`); this plugin adds it up.
When the session ends with karma of `strikes` or more it counts as nice, with
-`strikes` or less as naughty. A client whose naughty sessions outnumber its
nice ones by `negative` goes into the penalty box for `penalty_days` days:
while there, its connections are refused at connect with
`You were naughty. You cannot connect for N more days.` A client with more
than 5 naughty sessions than nice ones and no nice one at all gets a day of
penalty per naughty session on top.

Other plugins can read the client's history in the connection note
`karma_history` (nice minus naughty sessions, set at pre-connection); a
history above 10 starts the session with a karma point. The connection note
`karma` starts at 0.

Also, at any time:
- MAIL or RCPT with a space after the colon (`MAIL FROM: <a@b>`): -2 karma;
- a sender domain ending in a TLD of config/karma_tlds (`tld:N` lines, such
  as `jp:-4` or `fr:+1`): karma adjusted by N;
- a second and further recipient is refused (`too many recipients for karma
  K (h: H)`) unless the client has a good history or this session has
  positive karma;
- karma below -4 refuses the message at DATA (`very bad karma: K`).
Relay clients and whitelisted hosts or senders are neither boxed nor limited.

Arguments (key value pairs):
    negative N       how far naughty must outnumber nice for the penalty
                     box. Default: 1.
    strikes N        karma that makes a session nice or naughty. Default: 3.
    penalty_days N   days in the penalty box (decimals allowed). Default: 1.
    reject 0|1|connect|naughty  0: only log; 1 or connect: refuse at connect
                     with `reject_type`; naughty: leave the refusal to the
                     naughty plugin. Default: naughty.
    reject_type T    perm, temp, disconnect, temp_disconnect. Default:
                     disconnect.
    db_dir DIR       directory of the SQLite database `karma.sqlite`.
                     Default: `var/db` beside the spool dir.
    redis HOST[:PORT]  keep the history in Redis (also
                     `redis://host:port/db`), shared by several MX hosts.
    loglevel N       as for every plugin.

The database: key = the client's IP as an integer, value
`<penalty start>:<naughty>:<nice>:<connects>`, qpsmtpd's formats. Use the
`karma_tool` command to list, search, capture, release and prune entries,
and to import qpsmtpd's karma.dbm. A store that cannot answer (5 s
time-out) costs nothing but a log line: the client is treated as unknown.

Example config/plugins lines (karma early, before DNS checks; naughty later):
    karma
    karma penalty_days 2 reject connect reject_type perm

Differences from qpsmtpd:
- a naughty session is counted as naughty (qpsmtpd 0.96 stopped counting
  them, so its penalty-box bonus could never happen);
- the history is read once per connection, at pre-connection, and used at
  connect (qpsmtpd read it at both);
- the store is SQLite or Redis (given explicitly; qpsmtpd tried a local
  Redis first, then a DBM file); `nfslock` is accepted and ignored;
- bad arguments and bad karma_tlds lines stop start-up with a message.
"""

from __future__ import annotations

import ipaddress
import re
import time

from qpsmtpd_py.constants import DECLINED, DENY, LOGDEBUG, LOGERROR, LOGINFO
from qpsmtpd_py.plugin import Plugin, PluginError
from qpsmtpd_py.state import StoreError, StoreSettings

DAY = 86400
KNOWN = ("negative", "strikes", "penalty_days", "reject", "reject_type", "db_dir", "redis", "nfslock", "loglevel")


class Record:
    """One client's history: qpsmtpd's `penalty_start:naughty:nice:connects`."""

    __slots__ = ("penalty_start", "naughty", "nice", "connects")

    def __init__(self, penalty_start: float = 0, naughty: int = 0, nice: int = 0, connects: int = 0) -> None:
        self.penalty_start, self.naughty, self.nice, self.connects = penalty_start, naughty, nice, connects

    @classmethod
    def parse(cls, value: str | None) -> Record:
        parts = ((value or "").split(":") + ["0"] * 4)[:4]
        numbers = []
        for part in parts:
            try:
                numbers.append(float(part or 0))
            except ValueError:
                numbers.append(0.0)
        return cls(numbers[0], int(numbers[1]), int(numbers[2]), int(numbers[3]))

    def __str__(self) -> str:
        return f"{int(self.penalty_start)}:{self.naughty}:{self.nice}:{self.connects}"

    @property
    def history(self) -> int:
        return self.nice - self.naughty


def ip_key(ip: str) -> str:
    """qpsmtpd's key: the IP as Net::IP's intip (a decimal integer)."""
    return str(int(ipaddress.ip_address(ip)))


class Karma(Plugin):
    reject_values = re.compile(r"^(?:0|1|connect|naughty)$")
    reject_help = "0, 1, connect or naughty"
    clock = staticmethod(time.time)  # tests put a fake clock here

    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"arguments come in pairs (penalty_days 2 reject connect), not `{' '.join(args)}`")
        self.warn_unknown_arguments(KNOWN)
        self.negative = self._number("negative", 1, int)
        self.strikes = self._number("strikes", 3, int)
        self.penalty_days = self._number("penalty_days", 1, float)
        self.args.setdefault("reject", "naughty")
        self.args.setdefault("reject_type", "disconnect")
        self.tlds = parse_karma_tlds(qp.config_list("karma_tlds"))
        try:
            self.store_settings = StoreSettings.from_args("karma", self.args, qp.spool_dir)
        except ValueError as exc:
            raise PluginError(str(exc)) from None
        self._store = None

    def _number(self, name, default, kind):
        text = self.args.get(name)
        if not text:  # qpsmtpd: 0 or empty means the default
            return default
        try:
            value = kind(text)
        except ValueError:
            value = -1
        if value < 0:
            raise PluginError(f"{name} must be a positive {'whole ' if kind is int else ''}number, not {text!r}")
        return value or default

    # -- hooks --------------------------------------------------------------------------------
    async def hook_pre_connection(self, transaction, info):
        notes = self.connection.notes
        notes["karma_history"] = 0
        remote_ip = (info or {}).get("remote_ip") or self.connection.remote_ip
        record = await self.read(remote_ip)
        notes["karma_record"] = record
        if record is not None:
            self.calc_karma(record)
        return DECLINED

    async def hook_connect(self, transaction):
        notes = self.connection.notes
        notes["karma"] = 0
        if self.is_immune():
            return DECLINED
        record = notes.get("karma_record")
        if record is None:
            self.log(LOGINFO, "pass, no record")
            return DECLINED
        summary = f"{record.naughty} naughty, {record.nice} nice, {record.connects} connects"
        karma = self.calc_karma(record)
        if not record.penalty_start:
            self.log(LOGINFO, f"pass, no penalty ({summary})")
            return DECLINED
        days_old = (self.clock() - record.penalty_start) / DAY
        if days_old >= self.penalty_days:
            self.log(LOGINFO, f"pass, penalty expired ({summary})")
            return DECLINED
        record.connects += 1
        await self.write(self.connection.remote_ip, record)
        left = self.penalty_days - days_old
        return self.get_reject(f"You were naughty. You cannot connect for {left:.2f} more days.", str(karma))

    def hook_mail(self, transaction, sender, *args):
        self.check_envelope_format(self.connection.notes.get("envelope_from") or "")
        host = (sender.host or "").lower() if sender is not None else ""
        for tld, score in self.tlds.items():
            if host.endswith("." + tld):
                self.log(LOGINFO, f"adjusting karma for .{tld} envelope sender")
                self.adjust_karma(score)
        return DECLINED

    def hook_rcpt(self, transaction, recipient, *args):
        notes = self.connection.notes
        self.check_envelope_format(notes.get("envelope_rcpt") or "")
        notes["recipient_count"] = notes.get("recipient_count", 0) + 1
        if self.is_immune():
            return DECLINED
        accepted = len(transaction.recipients)
        if not accepted:
            return DECLINED
        history, karma = notes.get("karma_history", 0), notes.get("karma", 0)
        if history > 0:
            self.log(LOGINFO, "info, good history")
            return DECLINED
        if karma > 0:
            self.log(LOGINFO, "info, good connection")
            return DECLINED
        return DENY, f"too many recipients for karma {karma} (h: {history})"

    def hook_data(self, transaction):
        return self.refuse_very_bad_karma()

    def hook_data_post(self, transaction):
        return self.refuse_very_bad_karma()

    async def hook_disconnect(self, transaction):
        karma = self.connection.notes.get("karma")
        if not karma:
            self.log(LOGDEBUG, "no karma")
            return DECLINED
        remote_ip = self.connection.remote_ip
        record = await self.read(remote_ip) or Record()
        verdict = self.judge(record, karma)
        self.log(LOGINFO, f"{verdict}, (msg: {karma}, his: {record.history})")
        record.connects += 1
        await self.write(remote_ip, record)
        return DECLINED

    # -- the rules ----------------------------------------------------------------------------
    def judge(self, record: Record, karma: int) -> str:
        """Count this session into `record`; returns the log word."""
        if karma >= self.strikes:
            record.nice += 1
            return "positive"
        if karma > -self.strikes:
            return "neutral"
        record.naughty += 1
        if record.history > -self.negative:
            return "negative"
        if record.nice == 0 and record.history < -5:
            record.penalty_start = int(self.clock()) + abs(record.history) * DAY
            return "negative, sent to penalty box, penalty box bonus!"
        record.penalty_start = int(self.clock())
        return "negative, sent to penalty box"

    def calc_karma(self, record: Record) -> int:
        if not record.naughty and not record.nice:
            return 0
        self.connection.notes["karma_history"] = record.history
        if record.history > 10:
            self.adjust_karma(1)
        return record.history

    def check_envelope_format(self, line: str) -> None:
        if not line.upper().startswith(("FROM:<", "TO:<")):
            self.log(LOGINFO, f"illegal envelope address format: {line}")
            self.adjust_karma(-2)

    def refuse_very_bad_karma(self):
        if self.is_immune() or self.is_naughty():
            return DECLINED
        karma = self.connection.notes.get("karma", 0)
        if karma < -4:
            return self.get_reject(f"very bad karma: {karma}")
        return DECLINED

    # -- the store ---------------------------------------------------------------------------
    def store(self):
        """This child's store, opened on first use (never in the master)."""
        if self._store is None:
            self._store = self.store_settings.open(self.get_reactor(), clock=self.clock)
        return self._store

    async def read(self, ip: str) -> Record | None:
        try:
            value = await self.store().get(ip_key(ip))
        except (StoreError, ValueError) as exc:
            self.log(LOGERROR, f"skip, cannot read karma of {ip}: {exc}")
            return None
        return Record.parse(value) if value else None

    async def write(self, ip: str, record: Record) -> None:
        try:
            await self.store().set(ip_key(ip), str(record))
        except (StoreError, ValueError) as exc:
            self.log(LOGERROR, f"cannot record karma of {ip}: {exc}")


def parse_karma_tlds(lines: list[str]) -> dict[str, int]:
    """config/karma_tlds `tld:N` lines; PluginError names a bad one."""
    tlds = {}
    for line in lines:
        tld, _, score = line.strip().partition(":")
        try:
            tlds[tld.strip().lstrip(".").lower()] = int(score.strip().lstrip("+") or "x")
        except ValueError:
            raise PluginError(f"karma_tlds line {line!r} is not `tld:N` (such as `jp:-4` or `fr:+1`)") from None
    return tlds
