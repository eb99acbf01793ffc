"""What the stand-ins for commercial scanners share: reading the test's orders from the scanned message.

A message tells the stand-in what to find and how to behave, in its text:
- `TEST-VIRUS=<name>`: a virus called <name> (several lines, several viruses);
- `TEST-SUSPICION=<name>`: a suspicious object (kavscanner, aveclient);
- `TEST-EXIT=<n>`: exit with status n whatever was found (an error status);
- `TEST-SLEEP=<seconds>`: take that long (a slow or hung scanner);
- `TEST-OUTPUT=<word>`: print a special line (uvscan: `password-protected`).
When FAKE_SCANNER_CALLS names a file, each run appends its argument list
there, one line of words separated by tabs, so a test can check the command line.
"""

import os
import re
import sys
import time

_ORDER = re.compile(rb"TEST-(VIRUS|SUSPICION|EXIT|SLEEP|OUTPUT)=([^\s]+)")


class Orders:
    def __init__(self, path):
        self.viruses, self.suspicions, self.exit, self.output = [], [], None, []
        with open(path, "rb") as message:
            text = message.read()
        for kind, value in _ORDER.findall(text):
            value = value.decode()
            if kind == b"VIRUS":
                self.viruses.append(value)
            elif kind == b"SUSPICION":
                self.suspicions.append(value)
            elif kind == b"EXIT":
                self.exit = int(value)
            elif kind == b"OUTPUT":
                self.output.append(value)
            else:
                time.sleep(float(value))


def record_call():
    if os.environ.get("FAKE_SCANNER_CALLS"):
        with open(os.environ["FAKE_SCANNER_CALLS"], "a") as calls:
            calls.write("\t".join(sys.argv[1:]) + "\n")


def finish(orders, status):
    sys.stdout.flush()
    os._exit(orders.exit if orders.exit is not None else status)
