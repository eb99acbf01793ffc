"""Return codes and log levels, with qpsmtpd's exact numeric values.

Plugins written for qpsmtpd compare against these numbers, and log lines and
notes record them, so they must never change.
"""

OK = 900
DENY = 901
DENYSOFT = 902
DENY_DISCONNECT = 903
DENYHARD = DENY_DISCONNECT  # deprecated alias kept by qpsmtpd
DENYSOFT_DISCONNECT = 904
DECLINED = 909
DONE = 910

RETURN_CODES = {
    OK: "OK",
    DENY: "DENY",
    DENYSOFT: "DENYSOFT",
    DENY_DISCONNECT: "DENY_DISCONNECT",
    DENYSOFT_DISCONNECT: "DENYSOFT_DISCONNECT",
    DECLINED: "DECLINED",
    DONE: "DONE",
}
# Names as admins write them in config files (hosts_allow, rcpt_regexp, rcpt_map),
# DENYHARD being qpsmtpd's deprecated alias of DENY_DISCONNECT.
CODE_BY_NAME = {
    "OK": OK,
    "DENY": DENY,
    "DENYSOFT": DENYSOFT,
    "DENYHARD": DENY_DISCONNECT,
    "DENY_DISCONNECT": DENY_DISCONNECT,
    "DENYSOFT_DISCONNECT": DENYSOFT_DISCONNECT,
    "DECLINED": DECLINED,
    "DONE": DONE,
}
DENY_CODES = frozenset((DENY, DENYSOFT, DENY_DISCONNECT, DENYSOFT_DISCONNECT))
DISCONNECT_CODES = frozenset((DENY_DISCONNECT, DENYSOFT_DISCONNECT))

LOGDEBUG = 7
LOGINFO = 6
LOGNOTICE = 5
LOGWARN = 4
LOGERROR = 3
LOGCRIT = 2
LOGALERT = 1
LOGEMERG = 0
LOGRADAR = 0

LOG_LEVELS = {
    "LOGDEBUG": LOGDEBUG,
    "LOGINFO": LOGINFO,
    "LOGNOTICE": LOGNOTICE,
    "LOGWARN": LOGWARN,
    "LOGERROR": LOGERROR,
    "LOGCRIT": LOGCRIT,
    "LOGALERT": LOGALERT,
    "LOGEMERG": LOGEMERG,
    "LOGRADAR": LOGRADAR,
}


def return_code(value: "int | str") -> "str | int | None":
    """Name of a numeric code, or the number of a name (qpsmtpd's return_code())."""
    if isinstance(value, int):
        return RETURN_CODES.get(value)
    return {name: code for code, name in RETURN_CODES.items()}.get(value.upper())


def log_level(value: "int | str") -> "int | str | None":
    """Number of a level name ("LOGINFO" or "info"), or the name of a number."""
    if isinstance(value, int):
        for name, number in LOG_LEVELS.items():
            if number == value:
                return name
        return None
    name = value.upper()
    if not name.startswith("LOG"):
        name = "LOG" + name
    return LOG_LEVELS.get(name)
