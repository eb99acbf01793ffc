"""Settings: the command line, as one plain object passed down the layers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ListenAddress:
    host: str  # "0.0.0.0", "::", "127.0.0.1", ...
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class Settings:
    listen: list[ListenAddress] = field(default_factory=list)
    # Listeners that speak TLS from the first byte (SMTPS, RFC 8314), besides port 465.
    tls_listen: list[ListenAddress] = field(default_factory=list)
    port: int = 25
    children: int = 15
    idle_children: int = 5
    max_from_ip: int = 10
    sessions_per_child: int = 100
    child_lifetime: int = 100
    shutdown_timeout: float = 30.0
    user: str | None = None
    pid_file: str | None = None
    detach: bool = False
    pretty_child: bool = False
    renice_parent: int = 5
    renice_explicit: bool = False  # given on the command line: a failure is worth a warning
    debug: bool = False
    quiet: bool = False
    config_dir: str | None = None

    def implicit_tls_ports(self) -> set[int]:
        return {465} | {address.port for address in self.tls_listen}
