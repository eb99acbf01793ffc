r"""uribl - look up the host names and addresses in a message's URIs in URI block lists.

Hook: data_post. The message body (and with `scan-headers` its header fields)
is scanned for host names and IP addresses as they appear in URIs (SURBL,
URIBL and the like list the domains that spam advertises); each one is looked
up in every zone of `config/uribl_zones` as `<name>.<zone>` (A record), all
at the same time. A listed name adds a header, or refuses the message,
depending on the zone's action.

The body is read as MIME (Python's email package): every text/plain and
text/html part, at any depth of multipart and message/rfc822 parts, is
scanned after undoing its base64 or quoted-printable transfer encoding and
decoding its charset; of an HTML part also the values of its `href` and
`src` attributes (entities undone). Other parts (images, attachments) are
not scanned. A body without MIME header fields is one text/plain part.

What the scanner finds, as qpsmtpd's does:
- host names with a known top-level domain (any two-letter country code, or
  one of a built-in list of generic ones: com, net, org, info, biz, xyz, top,
  ...), anywhere in the text, with or without `http://`: each is looked up
  with its parent domains down to the registered domain
  (`a.b.example.com` -> `a.b.example.com`, `b.example.com`, `example.com`;
  three labels under the two-level country domains such as co.uk);
- with `checkip yes`: addresses in URIs, dotted (also with octal or hex
  parts, `http://0x7f.0.0.01/`) or as one integer (`http://3221225985/`),
  looked up reversed (`1.2.0.192.<zone>`);
- after undoing quoted-printable soft line breaks, `=XX` and `%XX` escapes,
  `&#NN;` entities, and removing `;` (spammers' munging).

config/uribl_zones, one zone per line, columns separated by white space:

    zone [mask[,mask...]] [action]

    multi.surbl.example   2,8    deny
    ob.surbl.example      1      add-header

mask: the answer (`127.0.0.N`, as a 32-bit number) is ANDed with the masks
ORed together; the name is listed when the result is not zero. Default (or
a negative mask): 0x00ffffff, any answer. action: overrides the `action`
argument for this zone. Lines starting with `#` are comments. A line with a
bad mask or action stops start-up (and is logged and skipped when the file
changes later).

config/uribl_whitelist_domains: registered domains (`example.com`,
`example.co.uk`) never looked up, nor any name under them.

Actions:
    add-header   (default) add `X-URIBL-Match: <name> in <zone>: <text>` on
                 top of the header, the text being the zone's TXT record (or
                 the A answer); one header per listed name and zone.
    deny         refuse the message: `552 <name> in <zone>: <text>`.
    denysoft     refuse it for now: `452 ...`.
    log          only log it.
Every match is logged at LOGWARN. When several names are listed, the headers
are added first; a deny wins over a denysoft.

Arguments (key value pairs):
    action add-header|deny|denysoft|log   default add-header.
    timeout N          seconds to wait for all the answers (default 30).
    scan-headers 0|1   also scan the header fields (default 0);
                       `check-headers` is the same.
    checkip yes|no     look up addresses too (default yes; some lists
                       answer for every address).
    max-names N        at most N distinct names looked up per message
                       (default 100; the first ones found).
    max-scan N         scan at most the first N bytes of the body (default
                       1048576; 0: no limit). A body that is larger than
                       64 KiB is read and scanned in a thread, so a big
                       message never stalls the other sessions.
    loglevel N         as for every plugin.
Relay clients and whitelisted hosts or senders are not checked.

Differences from qpsmtpd:
- MIME parts are decoded (qpsmtpd scanned the raw body, so it missed URIs in
  base64 parts), and only text parts are scanned;
- qpsmtpd never scanned the header (its body reader starts after it) and,
  without `scan-headers`, skipped the body's first paragraph; here the whole
  body is scanned, and the header fields with `scan-headers`;
- the whitelist applies to every form of a name (qpsmtpd missed names with
  more than one label under the whitelisted domain when written as a URL);
- the size scanned and the number of names are capped (qpsmtpd read the whole
  body in the reactor's process and looked up every name);
- only A records are asked for every name; the TXT text of a listed name is
  asked then, within what is left of the timeout (qpsmtpd asked both for
  every name);
- the built-in list of generic top-level domains is shorter than qpsmtpd's
  copy of the IANA list of 2017 (country codes are all matched);
- the order of matches is the order found (qpsmtpd's was random).

Example config/plugins line:
    uribl action deny timeout 10
"""

from __future__ import annotations

import email.policy
import re
from email.parser import BytesParser
from html.parser import HTMLParser

from twisted.internet import defer, threads

from qpsmtpd_py.constants import DECLINED, DENY, DENYSOFT, LOGDEBUG, LOGERROR, LOGINFO, LOGWARN
from qpsmtpd_py.dns import require_nameservers, resolver_for
from qpsmtpd_py.plugin import Plugin, PluginError

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_NAMES = 100
DEFAULT_MAX_SCAN = 1 << 20
THREAD_THRESHOLD = 64 << 10
ALL_LISTS = 0x00FFFFFF
ACTIONS = ("add-header", "deny", "denysoft", "log")
URI_ATTRIBUTES = ("href", "src")

# Country domains that register names one level down only (example.co.uk).
TWO_LEVEL_CCTLDS = frozenset(
    "ac ae ai ar at au az bb bh bm br bs ca ck cn co cr cu cy do et ge hk id il jp kr kw lv sg uk za".split())

# Generic top-level domains a name may end in (any two-letter one is a country).
GENERIC_TLDS = frozenset("""
    aero app art asia bar beauty bid biz blog buzz cab cam casa cat center cfd click cloud club com
    company coop cyou date dating design dev digital download email fit fun gdn group guru hair
    help homes host icu info int jobs kim life link live loan lol ltd makeup mobi mom monster
    museum name net network news one online org party pics pink porn pro quest racing red rest
    review run sbs science services sex shop site skin space store stream support tech tel
    today top travel trade uno vip website win work world wtf xxx xyz yachts zip
    edu gov mil arpa
""".split())

_LABELS = re.compile(r"[a-z0-9](?:[a-z0-9-]+\.)+[a-z]{2,63}(?![\w])", re.IGNORECASE)
_INTEGER_IP = re.compile(r"\w{3,16}:/+(?:\S+@)?(\d{7,})(?::\d*)?(?=[/?\s]|$)")
_DOTTED_IP = re.compile(r"\w{3,16}:/+(?:\S+@)?"
                        r"(\d+|0[xX][0-9A-Fa-f]+)\.(\d+|0[xX][0-9A-Fa-f]+)\."
                        r"(\d+|0[xX][0-9A-Fa-f]+)\.(\d+|0[xX][0-9A-Fa-f]+)")
_HEX_ESCAPE = re.compile(r"[=%]([0-9A-Fa-f]{2})")
_ENTITY = re.compile(r"&#(\d{2,3});?")


class Zone:
    __slots__ = ("action", "mask", "name")

    def __init__(self, name, mask, action):
        self.name, self.mask, self.action = name, mask, action

    def listed(self, address):
        """The A answer `address`, masked: non-zero when the name is listed."""
        parts = address.split(".")
        if len(parts) != 4 or not all(part.isdigit() for part in parts):
            return 0
        value = 0
        for part in parts:
            value = (value << 8) | (int(part) & 0xFF)
        return value & self.mask


def parse_zones(lines, default_action):
    """config/uribl_zones lines -> (zones, errors)."""
    zones, errors = [], []
    for line in lines:
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        mask = 0
        bad = False
        for item in (words[1] if len(words) > 1 else "").split(","):
            if not item or item == "0":
                mask |= ALL_LISTS
                continue
            if not re.fullmatch(r"-?\d+", item):
                errors.append(f"malformed mask {item!r} for {words[0]}")
                bad = True
                break
            mask |= int(item) if int(item) >= 0 else ALL_LISTS
        action = words[2] if len(words) > 2 else default_action
        if not bad and action not in ACTIONS:
            errors.append(f"unknown action {action!r} for {words[0]}")
            bad = True
        if not bad:
            zones.append(Zone(words[0].rstrip("."), mask or ALL_LISTS, action))
    return zones, errors


def _registered_domain_labels(labels):
    return 3 if labels[-1] in TWO_LEVEL_CCTLDS else 2


def _unmunge(line):
    line = _HEX_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), line)
    line = _ENTITY.sub(lambda m: chr(int(m.group(1))) if int(m.group(1)) < 0x110000 else "", line)
    return line.replace(";", "")


def _octet(text):
    if text[:2].lower() == "0x":
        return int(text, 16)
    if len(text) > 1 and text.startswith("0") and all(c in "01234567" for c in text):
        return int(text, 8)
    return int(text)


def scan_text(text, checkip=True, whitelist=frozenset(), max_names=DEFAULT_MAX_NAMES):
    """The names to look up (reversed addresses, host names), in the order found; and whether capped."""
    names: dict[str, None] = {}

    def add(name):
        if name not in names:
            if len(names) >= max_names:
                return False
            names[name] = None
        return True

    pending = []
    for raw in text.split("\n"):
        raw = raw.rstrip("\r")
        if raw.endswith("="):  # a quoted-printable soft line break
            pending.append(raw[:-1])
            continue
        line = _unmunge("".join(pending) + raw)
        pending = []
        if not line:
            continue
        if checkip:
            for match in _INTEGER_IP.finditer(line):
                value = int(match.group(1))
                if value > 0xFFFFFFFF:
                    continue
                octets = [(value >> shift) & 0xFF for shift in (24, 16, 8, 0)]
                if not add(".".join(str(o) for o in reversed(octets))):
                    return list(names), True
            for match in _DOTTED_IP.finditer(line):
                try:
                    octets = [_octet(part) for part in match.groups()]
                except ValueError:
                    continue
                if all(o <= 255 for o in octets) and not add(".".join(str(o) for o in reversed(octets))):
                    return list(names), True
        for match in _LABELS.finditer(line):
            labels = match.group(0).lower().split(".")
            while len(labels) > 1 and not (len(labels[-1]) == 2 or labels[-1] in GENERIC_TLDS):
                labels.pop()  # `example.com.txt`: the name ends at the last known TLD
            if len(labels) < 2 or not (len(labels[-1]) == 2 or labels[-1] in GENERIC_TLDS):
                continue
            cutoff = _registered_domain_labels(labels)
            if len(labels) < cutoff:
                continue
            if ".".join(labels[-cutoff:]) in whitelist:
                continue
            while len(labels) >= cutoff:
                if not add(".".join(labels)):
                    return list(names), True
                labels = labels[1:]
    return list(names), False


class _Attributes(HTMLParser):
    """Collects the values of href and src attributes (entities undone)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.values = []

    def handle_starttag(self, tag, attrs):
        self.values.extend(value for name, value in attrs if name in URI_ATTRIBUTES and value)

    handle_startendtag = handle_starttag


def _part_text(part):
    """A text part's content, transfer encoding undone, as text."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "latin-1"
    try:
        return payload.decode(charset, "replace")
    except (LookupError, ValueError, TypeError):  # an unknown or non-text codec
        return payload.decode("latin-1")


def _html_uris(html):
    parser = _Attributes()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # noqa: BLE001 - malformed markup: keep what was found
        pass
    return parser.values


def mime_text(header_bytes, data):
    """The text of a message's text/plain and text/html parts, decoded; for HTML also its href and src values."""
    message = BytesParser(policy=email.policy.default).parsebytes(header_bytes + b"\n" + data)
    texts = []
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        subtype = part.get_content_subtype()
        if subtype not in ("plain", "html"):
            continue
        text = _part_text(part)
        texts.append(text)
        if subtype == "html":
            texts.extend(_html_uris(text))
    return "\n".join(texts)


def read_text(body, header_text, limit, header_bytes=b""):
    """The text to scan: the header fields (if given), then the text parts of the body's first `limit` bytes.

    `header_bytes` is the message header, for its MIME fields (Content-Type,
    Content-Transfer-Encoding).
    """
    with body:
        data = body.read(limit) if limit > 0 else body.read()
    try:
        text = mime_text(header_bytes, data)
    except Exception:  # noqa: BLE001 - the email package choked on it: scan the raw body
        text = data.decode("latin-1")
    return header_text + text


class Uribl(Plugin):
    def register(self, qp, *args):
        if len(args) % 2:
            raise PluginError(f"uribl takes key value pairs, not `uribl {' '.join(args)}`")
        self.action = self.args.get("action") or "add-header"
        if self.action not in ACTIONS:
            raise PluginError(f"action must be one of {', '.join(ACTIONS)}, not {self.action!r}")
        self.timeout = self._number("timeout", DEFAULT_TIMEOUT, float) or DEFAULT_TIMEOUT
        self.max_names = self._number("max-names", DEFAULT_MAX_NAMES, int)
        self.max_scan = self._number("max-scan", DEFAULT_MAX_SCAN, int)
        self.checkip = (self.args.get("checkip") or "yes") == "yes"
        headers = self.args.get("check-headers") or self.args.get("scan-headers") or ""
        self.scan_headers = headers not in ("", "0")
        zones, errors = parse_zones(qp.config_list("uribl_zones"), self.action)
        if errors:
            raise PluginError(f"config/uribl_zones: {'; '.join(errors)}")
        self._zones = (tuple(qp.config_list("uribl_zones")), zones)
        require_nameservers(qp)

    def _number(self, key, default, kind):
        text = self.args.get(key)
        if text is None:
            return default
        try:
            value = kind(text)
        except ValueError:
            raise PluginError(f"{key} must be a number, not {text!r}") from None
        if value < 0:
            raise PluginError(f"{key} must not be negative, not {text!r}")
        return value

    def zones(self):
        lines = tuple(self.qp.config_list("uribl_zones"))
        if lines != self._zones[0]:
            zones, errors = parse_zones(lines, self.action)
            for error in errors:
                self.log(LOGERROR, f"ignoring a line of uribl_zones: {error}")
            self._zones = (lines, zones)
        return self._zones[1]

    async def hook_data_post(self, transaction):
        if self.is_immune():
            return DECLINED
        zones = self.zones()
        if not zones:
            self.log(LOGDEBUG, "skip, no zones")
            return DECLINED
        whitelist = frozenset(line.strip().lower().rstrip(".")
                              for line in self.qp.config_list("uribl_whitelist_domains") if line.strip())
        header_text = transaction.header.as_string() + "\n" if self.scan_headers and transaction.header else ""
        header_bytes = transaction.header_bytes()
        body = transaction.body_file()

        def scan():
            text = read_text(body, header_text, self.max_scan, header_bytes)
            return scan_text(text, self.checkip, whitelist, self.max_names)

        if transaction.body_size > THREAD_THRESHOLD:
            names, capped = await threads.deferToThreadPool(self._reactor(), self._reactor().getThreadPool(), scan)
        else:
            names, capped = scan()
        if capped:
            self.log(LOGWARN, f"more than {self.max_names} names in the message; looking up the first ones")
        if not names:
            self.log(LOGINFO, "pass, no URIs found in mail")
            return DECLINED
        matches = await self.lookup(names, zones)
        return self.act(transaction, matches)

    def _reactor(self):
        reactor = getattr(self.qp.runner, "clock", None)
        if reactor is None or not hasattr(reactor, "getThreadPool"):
            from twisted.internet import reactor
        return reactor

    async def lookup(self, names, zones):
        """[(zone, description)] for each listed (name, zone), in the order of `names` then zones."""
        resolver = resolver_for(self.qp)
        clock = self._reactor()
        started = clock.seconds()
        queries = [(name, zone, resolver.query(f"{name}.{zone.name}", "A", timeout=self.timeout))
                   for name in names for zone in zones]
        answers = await defer.gatherResults([query for _, _, query in queries])
        listed, failed = [], 0
        for (name, zone, _), answer in zip(queries, answers, strict=True):
            if answer.rcode not in ("NOERROR", "NXDOMAIN"):
                failed += 1
                continue
            hits = [rd.address for rd in answer.rdata if zone.listed(rd.address)]
            if hits:
                self.log(LOGDEBUG, f"match in {zone.name}: {name} -> {hits[0]}")
                listed.append((name, zone, hits[0]))
        if failed:
            self.log(LOGERROR, f"{failed} of {len(queries)} lookups failed or timed out")
        remaining = max(1.0, self.timeout - (clock.seconds() - started))
        texts = await defer.gatherResults([resolver.query(f"{name}.{zone.name}", "TXT", timeout=remaining)
                                           for name, zone, _ in listed])
        self.log(LOGINFO, f"{len(queries)} lookups finished in {clock.seconds() - started:.2f} sec "
                          f"({len(listed)} match{'' if len(listed) == 1 else 'es'})")
        matches = []
        for (name, zone, address), text in zip(listed, texts, strict=True):
            txt = ""
            if text.rcode == "NOERROR" and text.rdata:
                txt = b"".join(text.rdata[0].strings).decode("utf-8", "replace")
            matches.append((zone, f"{name} in {zone.name}: {txt or address}"))
        return matches

    def act(self, transaction, matches):
        deny = denysoft = None
        for zone, description in matches:
            self.log(LOGWARN, description)
            if zone.action == "add-header" and transaction.header is not None:
                transaction.header.add("X-URIBL-Match", description, 0)
            elif zone.action == "deny" and deny is None:
                deny = description
            elif zone.action == "denysoft" and denysoft is None:
                denysoft = description
        if deny is not None:
            return DENY, deny
        if denysoft is not None:
            return DENYSOFT, denysoft
        if not matches:
            self.log(LOGINFO, "pass")
        return DECLINED
