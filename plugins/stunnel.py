"""stunnel - learn the real client address from a proxy in front of us (PROXY protocol).

Behind stunnel, HAProxy or a cloud load balancer every connection comes from
the proxy. Such a proxy sends a PROXY protocol header before any SMTP byte;
this plugin reads it (version 1, text, and version 2, binary) before the
greeting and before the other pre-connection plugins, and from then on the
session sees the real client: remote_ip, remote_port, Received lines,
relay/hosts_allow decisions and per-IP limits all use it.

Hook: pre-connection (registered to run first, wherever the line is).

Headers are accepted only from trusted proxies; other clients are served as
they are. A trusted proxy that sends no valid header within the time-out is
disconnected instead of greeted (guessing would let anyone behind it pose as
the proxy itself): it gets `550 PROXY protocol header expected`. A v1
`UNKNOWN` or v2 `LOCAL` header (health checks) keeps the proxy's own address.

qpsmtpd's plugin handled only v1, only from 127.0.0.1, and only as a command
sent after the greeting (which real proxies do not do); its `proxy on`
argument is still understood.

Arguments (key/value pairs):
- `proxy on|off`: qpsmtpd's switch (default on).
- `trusted ADDR[,ADDR...]`: proxies allowed to send headers, IPs or CIDR
  networks, IPv4 or IPv6 (default 127.0.0.1,::1).
- `timeout N`: seconds to wait for the header (default 5).

Notes set: connection `proxy` (YES), `protocol`, `remote_ip`, `local_ip`,
`remote_port`, `local_port`, as qpsmtpd.

Example config/plugins line:
    stunnel trusted 10.0.0.5,10.0.0.6 timeout 3
"""

import ipaddress

from qpsmtpd_py import proxy_protocol
from qpsmtpd_py.constants import DECLINED, DENY_DISCONNECT, LOGINFO, LOGWARN
from qpsmtpd_py.plugin import Plugin, PluginError


class Stunnel(Plugin):
    def register(self, qp, *args):
        self.enabled = self.args.get("proxy", "on").lower() == "on"
        try:
            self.trusted = [ipaddress.ip_network(item.strip(), strict=False)
                            for item in self.args.get("trusted", "127.0.0.1,::1").split(",") if item.strip()]
        except ValueError as exc:
            raise PluginError(f"trusted: {exc}") from None
        try:
            self.timeout = float(self.args.get("timeout", "5"))
        except ValueError:
            raise PluginError(f"timeout must be a number of seconds, not {self.args['timeout']!r}") from None
        if self.enabled:
            self.log(LOGINFO, "proxy protocol enabled")
            # First: every other pre-connection plugin must see the real client.
            self.register_hook("pre-connection", self.read_header, unshift=True)

    def is_trusted(self, ip):
        address = ipaddress.ip_address(ip)
        return any(address in network for network in self.trusted if network.version == address.version)

    async def read_header(self, transaction, info):
        connection = self.connection
        if not self.is_trusted(connection.remote_ip):
            return DECLINED
        session = self.session
        try:
            header = await session.read_preamble(proxy_protocol.header_length, self.timeout)
            proxied = proxy_protocol.parse(header)
        except (ValueError, TimeoutError) as exc:
            self.log(LOGWARN, f"fail, no PROXY header from trusted {connection.remote_ip}: {exc}")
            return DENY_DISCONNECT, "PROXY protocol header expected"
        if proxied is None:
            self.log(LOGINFO, "pass, PROXY header without addresses (health check)")
            return DECLINED
        connection.remote_ip, connection.remote_port = proxied.source_ip, proxied.source_port
        connection.local_ip, connection.local_port = proxied.destination_ip, proxied.destination_port
        connection.remote_host = connection.remote_info = f"[{proxied.source_ip}]"
        connection.notes.update(proxy="YES", protocol=proxied.protocol, remote_ip=proxied.source_ip,
                                local_ip=proxied.destination_ip, remote_port=proxied.source_port,
                                local_port=proxied.destination_port)
        info.update(remote_ip=proxied.source_ip, remote_port=proxied.source_port,
                    local_ip=proxied.destination_ip, local_port=proxied.destination_port)
        session.server.client_moved(session)
        self.log(LOGINFO, f"stunnel : {proxied.source_ip}:{proxied.source_port}")
        return DECLINED
