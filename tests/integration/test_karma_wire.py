"""karma in the real daemon (2 children): a naughty session puts the client in the penalty box."""

from __future__ import annotations

import sqlite3

from conftest import wait_until
from harness import plugin_source

# Stands in for the plugins that judge a session (dnsbl, spamassassin, ...): a sender
# called spammer@ costs 5 karma points.
JUDGE = plugin_source("""
    class Judge(Plugin):
        def hook_mail(self, transaction, sender, *args):
            if sender.user == "spammer":
                self.adjust_karma(-5)
            return DECLINED
""")


def greeting(daemon) -> tuple[int, list[str]]:
    with daemon.connect() as client:
        reply = client.reply()
        if reply[0] == 220:
            client.command("QUIT")
        return reply


def test_naughty_client_is_refused_on_its_next_connection(daemon_factory, tmp_path):
    db = tmp_path / "karmadb"
    daemon = daemon_factory(plugin_files={"judge": JUDGE},
                            extra_plugins=["judge", f"karma db_dir {db} reject connect reject_type disconnect"])
    assert greeting(daemon)[0] == 220
    with daemon.connect() as client:
        client.expect(220)
        client.expect(250, "HELO spam.example.com")
        client.expect(250, "MAIL FROM:<spammer@example.com>")
        client.command("QUIT")
    # The verdict is written at disconnect; whichever child takes the next connection reads it.
    refused = wait_until(lambda: (reply := greeting(daemon))[0] == 550 and reply, timeout=20, interval=0.1,
                         message="penalty box")
    assert refused == (550, ["You were naughty. You cannot connect for 1.00 more days."])
    with sqlite3.connect(db / "karma.sqlite") as connection:
        (value,) = connection.execute("SELECT value FROM state WHERE key = ?", (str(0x7F000001),)).fetchone()
    penalty, naughty, nice, connects = value.split(":")
    assert int(penalty) > 0 and (naughty, nice) == ("1", "0") and int(connects) >= 2
