"""dspam - classify messages with DSPAM's command-line client, and train it from other filters.

Hook: data_post. Runs `<dspam_bin> --user <user> --mode=tum --process
--deliver=summary --stdout` once per message, without a shell, with the
message on its input (an `X-Envelope-From: <sender>` line, the header, the
body streamed from the spool), and reads the summary line dspam prints:
    X-DSPAM-Result: <user>; result="Spam"; class="Spam"; probability=1.0000; confidence=1.00; signature=<sig>
Then, as in qpsmtpd:
- `X-DSPAM-Result: <result>, probability=<p>, confidence=<c>` and
  `X-DSPAM-Signature: <sig>` go on top of the message (the signature is what
  dspam needs to retrain it later: set `Preference "signatureLocation=headers"`
  in dspam.conf);
- the transaction note `dspam` holds the summary for later plugins: a dict
  with `class`, `result`, `probability`, `confidence`, `signature`;
- autolearn: when another filter disagrees with dspam, dspam is retrained
  (`--mode=toe --source=error --class=spam|innocent`), once per message;
- spam with a probability over `reject` and a confidence of 1 gets
  `552 dspam says, no spam please (#5.6.1)`.
The user is the recipient's address (lower case) when the message has one
recipient, else the user the daemon runs as. Relay clients and whitelisted
hosts and senders are not classified, nor are messages over size_limit.

Arguments (key value pairs):
- dspam_bin <path>: the dspam program (/usr/local/bin/dspam). It must exist
  and be executable when the daemon starts.
- autolearn naughty|karma|spamassassin|any: retrain dspam when
  naughty: the connection is marked naughty and dspam said Innocent (as spam);
  karma: the connection's karma is below -2 and dspam said Innocent (as
  spam), or above 2 and dspam said Spam (as innocent);
  spamassassin: SpamAssassin auto-learned the message the other way (list
  dspam after spamassassin in config/plugins, and enable SpamAssassin's
  bayes_auto_learn);
  any: all of these, in this order. Default: no training.
- reject <probability>|agree: reject spam whose probability is over this
  (0 to 1; default 1, that is never; 0 turns rejecting off). `agree`:
  reject only when SpamAssassin (listed before dspam) also says spam, with
  `we agree, no spam please`; karma -2 then, and +1 when both say ham with a
  confidence over 0.9.
- reject_type perm|temp|disconnect|temp_disconnect: how to reject (perm).
- size_limit <bytes>: larger messages are not classified (500000).
- timeout <seconds>: for waiting for a free slot, the classification and any
  training together (30); dspam is killed at the deadline.
- max_scans <n>: dspam runs at once per child; more wait (4).
- defer_on_error yes|no: when dspam cannot be run, fails, prints no result
  or is not done in time, answer `452 Unable to check the message for spam
  (<reason>), try again later` (yes, the default), or let the message pass
  unclassified with a warning in the log (no). A failed training run is only
  logged.

Example config/plugins line (after spamassassin):
    dspam dspam_bin /usr/bin/dspam autolearn spamassassin reject 0.95

DSPAM is not packaged for Debian 12, the system our tests run on: the tests
run this plugin against tests/programs/fake_dspam, a small program that
behaves as dspam's client does for the options used here and prints the
summary line in dspam's documented format.

Where we differ from qpsmtpd, and why:
- qpsmtpd runs dspam through a shell (with the recipient's address in the
  command line) and waits for it, blocking every session of the process;
  here dspam runs without a shell, asynchronously, at most max_scans at once
  per child, and is killed after `timeout`.
- A dspam that cannot be run, fails or prints no result gets the client a
  452 (qpsmtpd let the message through unclassified; `defer_on_error no`
  does that), and a missing dspam_bin stops the daemon at start (qpsmtpd
  logged it and left the plugin out).
- An X-DSPAM-Signature the message arrives with is removed (qpsmtpd kept it
  beside the new one, and retraining could pick the forged one).
- Bad arguments, including an unknown autolearn value, stop the daemon at
  start (qpsmtpd logged them at each message).
"""

import os
import re

from qpsmtpd_py.constants import DECLINED, DENY, DENYSOFT, DENYSOFT_DISCONNECT, LOGDEBUG, LOGERROR, LOGINFO
from qpsmtpd_py.plugin import PluginError
from qpsmtpd_py.spam_scan import SpamFilterPlugin, message_head, process_user
from qpsmtpd_py.spawn import ProgramProcess
from qpsmtpd_py.virus_scan import ScanError, program_path, size_argument

KNOWN = ("dspam_bin", "autolearn", "reject", "reject_type", "size_limit")
AUTOLEARN = ("naughty", "karma", "spamassassin", "any")
_OUTPUT_LIMIT = 16384


def parse_summary(output: str) -> dict[str, str] | None:
    """dspam's `--deliver=summary` line -> {result, class, probability, confidence, signature}."""
    line = next((line for line in output.splitlines() if "result=" in line), None)
    if line is None:
        return None
    summary = {}
    for part in line.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        summary[key] = value.strip('"')
    if not summary.get("result"):
        return None
    summary.setdefault("class", summary["result"])  # dspam before 3.8 printed no class
    return summary


class DspamProcess(ProgramProcess):
    """One run of dspam: the message on its input; fires `(status, stdout, stderr)`."""

    collected_fds = (1,)
    output_limit = _OUTPUT_LIMIT

    def __init__(self, plugin, transaction, clock):
        super().__init__(plugin, transaction, clock)
        self.errors = bytearray()

    def connectionMade(self):
        pipe = self.transport.pipes[0]
        pipe.write(message_head(self.transaction))
        self.stream_body(pipe, lambda sent: self.transport.closeChildFD(0))

    def childDataReceived(self, fd, data):
        if fd == 2:
            self.errors += data[:_OUTPUT_LIMIT - len(self.errors)]
        else:
            super().childDataReceived(fd, data)

    def outcome(self, status):
        return status, self.output.decode("utf-8", "replace"), self.errors.decode("utf-8", "replace")


class Dspam(SpamFilterPlugin):
    reject_values = re.compile(r"^(?:agree|[01]|[01]?\.\d+|1\.0*)$")
    reject_help = "a probability from 0 to 1 (e.g. 0.95) or agree"
    default_timeout = 30.0

    def register(self, qp, *args):
        self.key_value_arguments(args, KNOWN)
        self.setup_limits(self.args, defer_default=True)
        self.dspam_bin = program_path("dspam_bin", self.args.get("dspam_bin") or "/usr/local/bin/dspam")
        if not (os.path.isfile(self.dspam_bin) and os.access(self.dspam_bin, os.X_OK)):
            raise PluginError(f"dspam_bin {self.dspam_bin} is not an executable file: install dspam, "
                              "or set dspam_bin to where it is")
        self.autolearn = self.args.get("autolearn")
        if self.autolearn is not None and self.autolearn not in AUTOLEARN:
            raise PluginError(f"autolearn must be one of {', '.join(AUTOLEARN)}, not {self.autolearn!r}")
        reject = self.args.get("reject", "1")
        self.reject = None if reject != "agree" and float(reject) == 0 else reject
        self.size_limit = size_argument("size_limit", self.args.get("size_limit"), 500_000)

    # -- the hook ---------------------------------------------------------------------------------
    async def hook_data_post(self, transaction):
        if self.is_immune() or self.too_big(transaction, self.size_limit):
            return DECLINED
        user = self.dspam_username(transaction)
        try:
            summary = await self.limited_scan(lambda: self.classify(transaction, user))
        except ScanError as exc:
            return self.scan_failed(str(exc))
        transaction.notes["dspam"] = summary
        self.attach_headers(transaction, summary)
        return self.verdict(transaction, summary)

    def dspam_username(self, transaction):
        recipients = transaction.recipients
        if len(recipients) != 1:
            self.log(LOGINFO, f"{len(recipients)} recipients, ignoring user preferences")
            return process_user()
        return recipients[0].address().lower()

    async def classify(self, transaction, user):
        summary = await self.run_dspam(transaction, ["--user", user, "--mode=tum", "--process"])
        lesson = self.lesson(transaction, summary)
        if lesson is not None:
            try:
                await self.run_dspam(transaction, ["--user", user, "--mode=toe", "--source=error",
                                                   f"--class={lesson}"])
            except ScanError as exc:
                self.log(LOGERROR, f"training as {lesson} failed: {exc}")
        return summary

    async def run_dspam(self, transaction, args):
        """Run dspam with `args` on the message: its summary, or ScanError."""
        argv = [self.dspam_bin, *args, "--deliver=summary", "--stdout"]
        self.log(LOGDEBUG, " ".join(argv))
        process = DspamProcess(self, transaction, self.clock())
        try:
            process.start(self.clock(), argv, {0: "w", 1: "r", 2: "r"})
        except OSError as exc:
            raise ScanError(f"cannot run {self.dspam_bin}: {exc.strerror}") from None
        status, output, errors = await process.ended
        if status != 0:
            said = (errors.strip() or output.strip()).splitlines()
            raise ScanError(f"dspam failed ({status})" + (f": {said[0][:200]}" if said else ""))
        summary = parse_summary(output)
        if summary is None:
            raise ScanError("dspam printed no result")
        self.log(LOGDEBUG, output.splitlines()[0] if output else "")
        return summary

    # -- training ---------------------------------------------------------------------------------
    def lesson(self, transaction, summary):
        """`spam` or `innocent` when autolearn says dspam got it wrong, else None."""
        learn, result = self.autolearn, summary["result"]
        if learn in ("naughty", "any") and self.is_naughty() and result == "Innocent":
            self.log(LOGINFO, "training naughty FN message as spam")
            return "spam"
        karma = self.connection.notes.get("karma")
        if learn in ("karma", "any") and karma is not None:
            if karma < -2 and result == "Innocent":
                self.log(LOGINFO, f"training bad karma ({karma}) FN as spam")
                return "spam"
            if karma > 2 and result == "Spam":
                self.log(LOGINFO, f"training good karma ({karma}) FP as ham")
                return "innocent"
        if learn in ("spamassassin", "any"):
            return self.lesson_from_spamassassin(transaction, result)
        return None

    def lesson_from_spamassassin(self, transaction, result):
        sa = transaction.notes.get("spamassassin") or {}
        if not sa.get("is_spam"):
            if not self.is_naughty():  # spamassassin does not scan naughty connections
                self.log(LOGERROR, "SA results missing")
            return None
        learned = sa.get("autolearn")
        if sa["is_spam"] == "Yes" and learned == "spam" and result == "Innocent":
            self.log(LOGINFO, "training SA FN as spam")
            return "spam"
        if sa["is_spam"] == "No" and learned == "ham" and result == "Spam":
            self.log(LOGINFO, "training SA FP as ham")
            return "innocent"
        return None

    # -- the message and the verdict --------------------------------------------------------------
    @staticmethod
    def attach_headers(transaction, summary):
        header = transaction.header
        header.delete("X-DSPAM-Result")
        header.add("X-DSPAM-Result", f"{summary['result']}, probability={summary.get('probability', '')}, "
                                     f"confidence={summary.get('confidence', '')}", 0)
        header.delete("X-DSPAM-Signature")
        if summary.get("signature"):
            header.add("X-DSPAM-Signature", summary["signature"], 0)

    def verdict(self, transaction, summary):
        status = f"{summary['class']}, {summary.get('confidence')} c."
        if self.reject is None:
            self.log(LOGINFO, f"skip, reject disabled ({status})")
            return DECLINED
        if self.reject == "agree":
            return self.reject_agree(transaction, summary, status)
        if summary["class"] == "Innocent":
            self.log(LOGINFO, f"pass, {status}")
            return DECLINED
        probability, confidence = _number(summary.get("probability")), _number(summary.get("confidence"))
        if probability <= float(self.reject):
            self.log(LOGINFO, f"pass, {summary['class']} probability is too low ({probability} <= {self.reject})")
            return DECLINED
        if confidence != 1:
            self.log(LOGINFO, f"pass, {summary['class']} confidence is too low ({confidence})")
            return DECLINED
        self.log(LOGINFO, f"fail, {summary['class']}, ({confidence} confident)")
        code = self.get_reject_type(DENY)
        status_class = 4 if code in (DENYSOFT, DENYSOFT_DISCONNECT) else 5
        return code, f"dspam says, no spam please (#{status_class}.6.1)"

    def reject_agree(self, transaction, summary, status):
        sa = transaction.notes.get("spamassassin") or {}
        if not sa.get("is_spam"):
            self.log(LOGINFO, f"pass, cannot agree, SA results missing ({status})")
            return DECLINED
        if summary["class"] == "Spam" and sa["is_spam"] == "Yes":
            self.adjust_karma(-2)
            self.log(LOGINFO, f"fail, agree, {status}")
            return self.get_reject_type(DENY), "we agree, no spam please"
        if summary["class"] == "Innocent" and sa["is_spam"] == "No":
            if _number(summary.get("confidence")) > 0.9:
                self.adjust_karma(1)
            self.log(LOGINFO, f"pass, agree, {status}")
            return DECLINED
        self.log(LOGINFO, f"pass, disagree, {status}")
        return DECLINED


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return 0.0
