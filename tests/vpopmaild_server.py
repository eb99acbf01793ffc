"""A vpopmaild stand-in for the auth/auth_vpopmaild tests (vpopmail has no Debian package).

It speaks the part of vpopmaild's protocol the plugin uses: greets `+OK`,
then answers `login <user> <password>` with `+OK+`, the user's details and a
`.` line when the password is right, `-ERR 0420 Login failed` otherwise. With
`greeting=None` it accepts connections and never says anything (a hung
server). Runs in a thread on a free loopback port; `logins` records what it got.
"""

from __future__ import annotations

import socketserver
import threading


class VpopmaildServer:
    def __init__(self, users: dict[str, str], greeting: str | None = "+OK ") -> None:
        self.users = users
        self.greeting = greeting
        self.logins: list[str] = []
        self.release = threading.Event()
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                if outer.greeting is None:
                    outer.release.wait(30)
                    return
                self.wfile.write(outer.greeting.encode() + b"\r\n")
                line = self.rfile.readline(4096).decode("utf-8", "replace").rstrip("\r\n")
                outer.logins.append(line)
                command, _, rest = line.partition(" ")
                user, _, password = rest.partition(" ")
                if command == "login" and user in outer.users and outer.users[user] == password:
                    self.wfile.write(f"+OK+\r\nname {user}\r\ndir /home/vpopmail/domains/x\r\n.\r\n".encode())
                else:
                    self.wfile.write(b"-ERR 0420 Login failed\r\n")

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> VpopmaildServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
