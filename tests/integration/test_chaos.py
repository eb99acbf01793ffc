"""Chaos: nothing accepted is ever lost.

The real daemon (queue/maildir, 3 children of 4 sessions each, a short child
lifetime) takes a steady load from several client threads while a chaos thread
SIGKILLs a random child every few hundred milliseconds and HUPs the master every
few seconds. The clients behave like a real MTA: any failure (reset, 421, 451,
timeout) closes the connection and the same message is tried again on a fresh
one, a bounded number of times.

Every message carries a unique token (in the body and the Message-Id) and the
number of the attempt (a header), so afterwards each file in the Maildir can be
traced back to one attempt of one message:
- an attempt that got 250 is in the Maildir exactly once, in the file the 250
  named, and complete;
- no attempt is written twice, and every file belongs to some attempt;
- a message whose attempt was written just before its child was killed (so the
  client never saw the 250) and then retried is in the Maildir twice: allowed
  by SMTP, counted and reported, and bounded by the number of kills;
- files left in Maildir/tmp and in the spool dir all belong to killed children.

The random seed is fixed, so the clients' messages and the chaos schedule are
the same on every run; which kill hits which session is up to the scheduler,
but the outcome checked is not.
"""

from __future__ import annotations

import os
import random
import re
import signal
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from conftest import wait_until

SEED = 20261126
CLIENTS = 6
LOAD_SECONDS = 12.0
KILL_GAP = (0.25, 0.6)  # seconds between two SIGKILLs
HUP_EVERY = 2.5  # seconds between two HUPs of the master
MAX_ATTEMPTS = 10  # per message, like a (very impatient) MTA's retry limit
CLIENT_TIMEOUT = 10.0  # per socket operation
SIZE_THRESHOLD = 4096  # bodies above this are spooled to disk: spool files are part of the test
RCPT = "postmaster@test.example.org"

DAEMON_ARGS = ["--children", "3", "--idle-children", "3", "--sessions-per-child", "4",
               "--child-lifetime", "50", "--shutdown-timeout", "5"]


def body_lines(token: str, big: bool) -> list[str]:
    """The message body, rebuilt from the token alone when checking the Maildir."""
    count = 150 if big else 3  # 150 lines of ~60 bytes: spooled, past SIZE_THRESHOLD
    lines = [f"token {token}"]
    lines += [f"{'.' if n % 10 == 0 else ''}line {n:04d} of {token} " + "x" * 30 for n in range(count)]
    return lines


def message_text(token: str, attempt: int, big: bool) -> str:
    header = [f"Message-Id: <{token}@chaos.example>", f"X-Chaos-Token: {token}", f"X-Chaos-Attempt: {attempt}",
              f"X-Chaos-Big: {int(big)}", f"Subject: chaos {token}"]
    return "\r\n".join(header + [""] + body_lines(token, big)) + "\r\n"


@dataclass
class Attempt:
    token: str
    attempt: int
    outcome: str  # "250" or what went wrong
    reply: str = ""  # the text of the 250


@dataclass
class ClientLog:
    attempts: list[Attempt] = field(default_factory=list)
    acknowledged: dict[str, Attempt] = field(default_factory=dict)  # token -> its 250 attempt
    given_up: list[str] = field(default_factory=list)
    rejected: list[Attempt] = field(default_factory=list)  # 5xx: never expected here


class Client(threading.Thread):
    """Sends messages until told to stop; some connections carry several messages."""

    def __init__(self, daemon, number: int, stop: threading.Event, log: ClientLog) -> None:
        super().__init__(name=f"chaos-client-{number}", daemon=True)
        self.host, self.port = daemon.host, daemon.port
        self.number = number
        self.stop_event = stop
        self.log = log
        self.rng = random.Random(SEED + number)
        self.smtp: smtplib.SMTP | None = None
        self.left_on_connection = 0

    def run(self) -> None:
        sequence = 0
        try:
            while not self.stop_event.is_set():
                token = f"c{self.number}m{sequence:05d}"
                sequence += 1
                self.deliver(token, big=self.rng.random() < 0.2)
        finally:
            self.drop()

    def drop(self) -> None:
        if self.smtp is not None:
            try:
                self.smtp.close()
            except OSError:
                pass
            self.smtp = None

    def connection(self) -> smtplib.SMTP:
        if self.smtp is None or self.left_on_connection <= 0:
            if self.smtp is not None:
                try:
                    self.smtp.quit()
                except (smtplib.SMTPException, OSError):
                    pass
                self.drop()
            smtp = smtplib.SMTP(timeout=CLIENT_TIMEOUT)
            self.smtp = smtp  # closed by drop() even if the greeting fails
            code, text = smtp.connect(self.host, self.port)
            if code != 220:
                raise smtplib.SMTPConnectError(code, text)
            code, text = smtp.ehlo("chaos.client.example")
            if code != 250:
                raise smtplib.SMTPHeloError(code, text)
            # Half the connections carry one message, the others up to four.
            self.left_on_connection = 1 if self.rng.random() < 0.5 else self.rng.randint(2, 4)
        return self.smtp

    def deliver(self, token: str, big: bool) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                code, text = self.transaction(token, attempt, big)
            except (smtplib.SMTPException, OSError) as exc:  # reset, EOF, timeout, 421 at greeting...
                code, text = None, f"{type(exc).__name__}: {exc}"
            if code == 250:
                record = Attempt(token, attempt, "250", text)
                self.log.attempts.append(record)
                self.log.acknowledged[token] = record
                return
            record = Attempt(token, attempt, f"{code} {text}" if code else text)
            self.log.attempts.append(record)
            self.drop()
            self.left_on_connection = 0
            if code is not None and 500 <= code < 600:
                self.log.rejected.append(record)
                return
            # A fresh connection after a short, growing pause (an MTA's queue run, sped up).
            time.sleep(min(1.0, 0.02 * 2 ** attempt) * self.rng.uniform(0.5, 1.0))
        self.log.given_up.append(token)

    def transaction(self, token: str, attempt: int, big: bool) -> tuple[int, str]:
        smtp = self.connection()
        self.left_on_connection -= 1
        code, text = smtp.mail("a@example.com")
        if code != 250:
            return code, text.decode(errors="replace")
        code, text = smtp.rcpt(RCPT)
        if code not in (250, 251):
            return code, text.decode(errors="replace")
        code, text = smtp.data(message_text(token, attempt, big))
        return code, text.decode(errors="replace")


@dataclass
class ChaosLog:
    killed: list[int] = field(default_factory=list)
    hups: int = 0


def chaos(daemon, stop: threading.Event, log: ChaosLog) -> None:
    rng = random.Random(SEED)
    next_hup = time.monotonic() + HUP_EVERY
    while not stop.wait(rng.uniform(*KILL_GAP)):
        children = sorted(daemon.live_children())
        if children:
            victim = rng.choice(children)
            try:
                os.kill(victim, signal.SIGKILL)
                log.killed.append(victim)
            except ProcessLookupError:
                pass  # it exited on its own meanwhile
        if time.monotonic() >= next_hup:
            daemon.signal(signal.SIGHUP)
            log.hups += 1
            next_hup += HUP_EVERY


def read_maildir_file(path) -> tuple[str, int, bool, int]:
    """(token, attempt, whether the body is complete, Message-Id lines) of one delivered file."""
    data = path.read_bytes()
    header, _, body = data.partition(b"\n\n")
    fields = dict(re.findall(rb"^(X-Chaos-\w+): (\S+)$", header, re.MULTILINE))
    token = fields.get(b"X-Chaos-Token", b"?").decode()
    attempt = int(fields.get(b"X-Chaos-Attempt", b"0"))
    big = fields.get(b"X-Chaos-Big") == b"1"
    expected = ("\n".join(body_lines(token, big)) + "\n").encode()
    return token, attempt, body == expected, header.count(b"\nMessage-Id: <" + token.encode())


def owner_pid(name: str) -> int | None:
    """The pid in a Maildir name (`<time>.P<pid>M...`) or a spool name (`<time>:<pid>:<n>`)."""
    found = re.match(r"\d+\.P(\d+)M", name) or re.match(r"\d+:(\d+):\d+", name)
    return int(found.group(1)) if found else None


def test_nothing_acknowledged_is_lost_while_children_are_killed_and_the_master_reloads(daemon_factory):
    started = time.monotonic()
    daemon = daemon_factory({"size_threshold": str(SIZE_THRESHOLD)}, args=DAEMON_ARGS)
    wait_until(lambda: len(daemon.live_children()) == 3, 5, message="three children")

    client_stop, chaos_stop = threading.Event(), threading.Event()
    logs = [ClientLog() for _ in range(CLIENTS)]
    clients = [Client(daemon, n, client_stop, logs[n]) for n in range(CLIENTS)]
    chaos_log = ChaosLog()
    chaos_thread = threading.Thread(target=chaos, args=(daemon, chaos_stop, chaos_log), daemon=True)
    for client in clients:
        client.start()
    chaos_thread.start()
    time.sleep(LOAD_SECONDS)
    chaos_stop.set()
    chaos_thread.join(5)
    client_stop.set()  # each client finishes (or gives up on) the message it is on
    for client in clients:
        client.join(MAX_ATTEMPTS * (1.0 + CLIENT_TIMEOUT))
    assert not chaos_thread.is_alive() and not any(client.is_alive() for client in clients)
    load_seconds = time.monotonic() - started

    # Still serving after all that: a fresh session is greeted.
    with daemon.connect(timeout=10) as fresh:
        fresh.expect(220, timeout=10)
        fresh.expect(221, "QUIT")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait_exit(15) == 0

    attempts = [a for log in logs for a in log.attempts]
    acknowledged = {token: a for log in logs for token, a in log.acknowledged.items()}
    given_up = [token for log in logs for token in log.given_up]
    rejected = [a for log in logs for a in log.rejected]
    failures = Counter(re.sub(r"\d{3,}", "N", a.outcome.split(":")[0]) for a in attempts if a.outcome != "250")

    delivered: dict[tuple[str, int], list[str]] = {}
    incomplete, bad_ids = [], []
    for path in daemon.maildir_files("new"):
        token, attempt, complete, message_ids = read_maildir_file(path)
        delivered.setdefault((token, attempt), []).append(path.name)
        if not complete:
            incomplete.append(path.name)
        if message_ids != 1:
            bad_ids.append(path.name)
    copies = Counter(token for (token, _), names in delivered.items() for _ in names)
    tried = {(a.token, a.attempt) for a in attempts}
    unacked_duplicates = sorted(token for token, n in copies.items() if n > 1)
    killed = set(chaos_log.killed)
    tmp_left = [path.name for path in daemon.maildir_files("tmp")]
    spool_left = [path.name for path in daemon.spool_files()]
    tmp_not_killed = [name for name in tmp_left if owner_pid(name) not in killed]
    spool_not_killed = [name for name in spool_left if owner_pid(name) not in killed]

    summary = (f"chaos: {len(attempts)} attempts, {len(acknowledged)} messages acknowledged, "
               f"{len(given_up)} given up, {len(chaos_log.killed)} kills, {chaos_log.hups} HUPs, "
               f"{len(unacked_duplicates)} duplicates of unacknowledged attempts, "
               f"{len(tmp_left)} Maildir/tmp and {len(spool_left)} spool leftovers (of killed children), "
               f"{load_seconds:.1f}s; failed attempts by kind: {dict(failures)}")
    print(summary)

    assert chaos_log.killed and chaos_log.hups >= 3, summary
    assert len(acknowledged) > 500, summary  # the load really ran
    assert rejected == [], rejected[:5]
    # Bounded retries were enough: the daemon kept serving through the chaos.
    assert given_up == [], (summary, given_up[:5])

    # No loss: each acknowledged attempt is in the Maildir once, in the file its 250 named.
    for token, ack in acknowledged.items():
        names = delivered.get((token, ack.attempt), [])
        assert len(names) == 1, (token, ack, names)
        assert names[0] in ack.reply.split(), (token, ack.reply, names)
        assert f"<{token}@chaos.example>" in ack.reply, ack.reply
    # No attempt is written twice, and nothing is in the Maildir that no client sent.
    assert [key for key, names in delivered.items() if len(names) > 1] == []
    assert sorted(set(delivered) - tried) == []
    assert incomplete == [] and bad_ids == [], (incomplete[:5], bad_ids[:5])
    # A message is delivered at most once per attempt that never saw its 250; such an
    # extra copy needs the child to die between the rename into new/ and the reply.
    for token in unacked_duplicates:
        assert token in acknowledged, (token, [names for key, names in delivered.items() if key[0] == token])
        unacked_written = [key for key in delivered if key[0] == token and key[1] != acknowledged[token].attempt]
        assert unacked_written, (token, acknowledged[token])
        for _, attempt in unacked_written:
            outcome = next(a.outcome for a in attempts if (a.token, a.attempt) == (token, attempt))
            assert outcome != "250", (token, attempt, outcome)
    assert all(copies[token] == 1 for token in given_up), summary
    assert len(unacked_duplicates) <= len(chaos_log.killed), summary
    # Leftovers: only of deliveries and sessions cut short by a SIGKILL.
    assert tmp_not_killed == [], (tmp_not_killed, summary)
    assert spool_not_killed == [], (spool_not_killed, summary)
    assert time.monotonic() - started < 40, summary


def test_children_killed_after_serving_are_replaced_at_once(daemon_factory):
    """A child that greeted a client has started fine; its death is no reason to wait before the next."""
    daemon = daemon_factory(args=["--children", "1", "--idle-children", "1"])
    for kill in range(7):
        started = time.monotonic()
        with daemon.connect(timeout=10) as client:
            client.expect(220, timeout=10)
            client.expect(221, "QUIT")
        waited = time.monotonic() - started
        assert waited < 2.5, f"no child served for {waited:.1f}s after kill {kill}: {daemon.log()}"
        [child] = wait_until(daemon.live_children, 5, message="a child")
        os.kill(child, signal.SIGKILL)
        wait_until(lambda c=child: c not in daemon.live_children(), 5, message="the child gone")
    assert daemon.stop() == 0


def test_owner_pid_reads_maildir_and_spool_names():
    assert owner_pid("1764151200.P4242M123456Q7.host") == 4242
    assert owner_pid("1764151200:4243:12") == 4243
    assert owner_pid("other") is None


def test_message_bodies_round_trip_through_the_checker(tmp_path):
    for big in (False, True):
        text = message_text("c0m00001", 2, big)
        header, body = text.split("\r\n\r\n", 1)
        path = tmp_path / f"m{int(big)}"
        path.write_bytes(("Return-Path: <a@example.com>\n" + header.replace("\r\n", "\n") + "\n\n"
                          + body.replace("\r\n", "\n")).encode())
        assert read_maildir_file(path) == ("c0m00001", 2, True, 1)
    assert len(message_text("c0m00001", 1, True).split("\r\n\r\n", 1)[1]) > SIZE_THRESHOLD
