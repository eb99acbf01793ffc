"""SMTP load generator for benchmarking qpsmtpd-py and its peers (stdlib only).

Usage:
    python bench/load.py [--host 127.0.0.1] --port N [--sessions 20] [--messages 5000]
                         [--size BYTES] [--persist] [--rcpts 1] [--from a@example.com]
                         [--to b@example.com] [--helo bench.client] [--pid MASTER_PID]
                         [--timeout 30] [--json]

Runs --sessions concurrent SMTP sessions that together deliver --messages
messages. Without --persist every message gets its own connection (connect,
220, HELO, MAIL, RCPT x rcpts, DATA, body, ".", QUIT); with --persist each
session keeps one connection open for all the messages it sends.

Only loopback addresses (127.0.0.0/8, ::1) are accepted as --host.

Plain output ends with one line holding just the rate in messages per second,
so scripts can use `tail -n1`; --json prints a single JSON object instead.
Exit status: 0 when every message was accepted, 1 when any failed, 2 for
usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import ipaddress
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

# How many failure descriptions (each with its first reply lines) to keep.
MAX_FAILURE_SAMPLES = 5
# Reply lines shown per failure: enough to see the reason, not a whole EHLO list.
MAX_REPLY_LINES = 3

# Body lines are 78 characters plus CRLF, well under RFC 5321's 998 limit.
LINE_CHARS = 78
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

# Used when --size is not given: about as small as smtp-source's default body,
# with one line that needs dot-stuffing so the server's unstuffing is exercised.
DEFAULT_BODY = b"This is a load test message.\r\n.This line starts with a dot.\r\n"


@dataclass
class LoadConfig:
    """Everything one load run needs; mirrors the command line options."""

    port: int
    host: str = "127.0.0.1"
    sessions: int = 20
    messages: int = 5000
    size: int | None = None
    persist: bool = False
    rcpts: int = 1
    mail_from: str = "a@example.com"
    rcpt_to: str = "b@example.com"
    helo: str = "bench.client"
    timeout: float = 30.0


@dataclass
class LoadResult:
    """Counters and samples collected by one run."""

    ok: int = 0
    failed: int = 0
    quit_errors: int = 0
    connections: int = 0
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    failure_kinds: dict[str, int] = field(default_factory=dict)
    failure_samples: list[str] = field(default_factory=list)


class SMTPReplyError(Exception):
    """An unexpected reply (or none) at a given protocol step."""

    def __init__(self, stage: str, lines: list[bytes], code: int | None = None) -> None:
        super().__init__(stage)
        self.stage = stage
        self.lines = lines
        self.code = code

    def kind(self) -> str:
        return f"{self.stage} {self.code if self.code is not None else 'no reply'}"

    def describe(self) -> str:
        shown = [ln.decode("utf-8", "replace").rstrip("\r\n") for ln in self.lines[:MAX_REPLY_LINES]]
        if len(self.lines) > MAX_REPLY_LINES:
            shown.append("...")
        return f"{self.stage}: " + (" | ".join(shown) if shown else "(connection closed, no reply)")


def check_loopback(host: str) -> str:
    """Return the host as an IP literal if it is a loopback address, else raise ValueError.

    Names are refused on purpose: resolving them could send traffic (DNS or
    SMTP) off the machine, and this tool must only ever talk to loopback.
    """
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        addr = ipaddress.ip_address(literal)
    except ValueError:
        raise ValueError(f"host must be a loopback IP address (127.0.0.1 or ::1), not {host!r}") from None
    if not addr.is_loopback:
        raise ValueError(f"host {host!r} is not a loopback address; refusing to send load there")
    return str(addr)


def build_body(size: int | None) -> bytes:
    """The message body (after the header block), not dot-stuffed.

    With a size, the body is exactly `size` bytes of 78-character lines plus
    CRLF (the last one shorter); every tenth line starts with a dot so the
    dot-stuffing path is part of what is measured.
    """
    if size is None:
        return DEFAULT_BODY
    if size == 0:
        return b""
    if size < 2:
        raise ValueError("size must be 0 or at least 2 (a line needs its CRLF)")
    doubled = _ALPHABET * 3
    lines: list[str] = []
    remaining = size
    i = 0
    while remaining > 0:
        if remaining >= LINE_CHARS + 2:
            width = LINE_CHARS
            # A lone byte cannot form a line of its own; widen this one instead.
            if remaining - (LINE_CHARS + 2) == 1:
                width += 1
        else:
            width = remaining - 2
        start = (i * 7) % len(_ALPHABET)
        text = doubled[start:start + width]
        if i % 10 == 1 and text:
            text = "." + text[1:]
        lines.append(text + "\r\n")
        remaining -= width + 2
        i += 1
    body = "".join(lines).encode("ascii")
    assert len(body) == size
    return body


def dot_stuff(data: bytes) -> bytes:
    """Double the leading dot of every line (RFC 5321 section 4.5.2)."""
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed


def build_headers(cfg: LoadConfig, index: int, date: str, tag: str) -> bytes:
    """The header block plus the blank line that ends it, for message number `index`."""
    return (
        f"From: <{cfg.mail_from}>\r\n"
        f"To: <{cfg.rcpt_to}>\r\n"
        f"Subject: load test {index}\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{index}.{tag}@{cfg.helo}>\r\n"
        "\r\n"
    ).encode("ascii")


def recipients(cfg: LoadConfig) -> list[str]:
    """Envelope recipients: --to itself, or numbered copies (1b@..., 2b@...) like smtp-source -r."""
    if cfg.rcpts == 1:
        return [cfg.rcpt_to]
    return [f"{n}{cfg.rcpt_to}" for n in range(1, cfg.rcpts + 1)]


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int | None, list[bytes]]:
    lines: list[bytes] = []
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            # readline returns a partial (or empty) line only at EOF.
            if line:
                lines.append(line)
            return None, lines
        lines.append(line)
        if line[3:4] != b"-":
            break
    code = lines[-1][:3]
    return (int(code) if code.isdigit() else None), lines


class _Runner:
    """Drives the sessions; single-threaded (asyncio), so plain counters are safe."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.result = LoadResult()
        self.remaining = cfg.messages
        self.next_index = 0
        self.date = email.utils.formatdate(localtime=True)
        self.tag = f"{os.getpid()}.{time.time_ns()}"
        # The body is the same for every message: stuff it once, not per message.
        self.body_wire = dot_stuff(build_body(cfg.size)) + b".\r\n"
        # Commands are pre-encoded so the hot loop only writes bytes.
        self.helo_cmd = f"HELO {cfg.helo}\r\n".encode("ascii")
        self.mail_cmd = f"MAIL FROM:<{cfg.mail_from}>\r\n".encode("ascii")
        self.rcpt_cmds = [f"RCPT TO:<{r}>\r\n".encode("ascii") for r in recipients(cfg)]

    def _record_failure(self, exc: BaseException) -> None:
        self.result.failed += 1
        self._sample(exc)

    def _sample(self, exc: BaseException) -> None:
        if isinstance(exc, SMTPReplyError):
            kind, text = exc.kind(), exc.describe()
        elif isinstance(exc, TimeoutError):
            kind, text = "timeout", f"timeout: no reply within {self.cfg.timeout} s"
        else:
            kind = type(exc).__name__
            text = f"{kind}: {exc}"
        kinds = self.result.failure_kinds
        kinds[kind] = kinds.get(kind, 0) + 1
        if len(self.result.failure_samples) < MAX_FAILURE_SAMPLES:
            self.result.failure_samples.append(text)

    async def _command(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        data: bytes,
        stage: str,
        expect: tuple[int, ...],
    ) -> None:
        writer.write(data)
        code, lines = await _read_reply(reader)
        if code not in expect:
            raise SMTPReplyError(stage, lines, code)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(self.cfg.timeout):
            reader, writer = await asyncio.open_connection(self.cfg.host, self.cfg.port)
            self.result.connections += 1
            try:
                code, lines = await _read_reply(reader)
                if code != 220:
                    raise SMTPReplyError("greeting", lines, code)
                await self._command(reader, writer, self.helo_cmd, "HELO", (250,))
            except BaseException:
                writer.close()
                raise
        return reader, writer

    async def _transaction(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int
    ) -> None:
        started = time.perf_counter()
        # One timer per transaction rather than per reply keeps the client's own
        # overhead down; a stalled server is still caught.
        async with asyncio.timeout(self.cfg.timeout):
            await self._command(reader, writer, self.mail_cmd, "MAIL FROM", (250,))
            for rcpt in self.rcpt_cmds:
                await self._command(reader, writer, rcpt, "RCPT TO", (250, 251))
            await self._command(reader, writer, b"DATA\r\n", "DATA", (354,))
            headers = build_headers(self.cfg, index, self.date, self.tag)
            # Header lines never start with a dot, so only the body needed stuffing.
            await self._command(reader, writer, headers + self.body_wire, "end of data", (250,))
        self.result.latencies.append(time.perf_counter() - started)
        self.result.ok += 1

    async def _quit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.cfg.timeout):
                await self._command(reader, writer, b"QUIT\r\n", "QUIT", (221,))
        except (OSError, ValueError, SMTPReplyError) as exc:
            # The message was already accepted; a bad QUIT is reported apart.
            self.result.quit_errors += 1
            self._sample(exc)
        finally:
            writer.close()

    async def session(self) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        # Sessions take messages from one shared counter (as smtp-source does),
        # so a slow session does not leave a straggling tail at the end.
        while self.remaining > 0:
            self.remaining -= 1
            index = self.next_index
            self.next_index += 1
            try:
                if conn is None:
                    conn = await self._open()
                await self._transaction(*conn, index)
            except (OSError, ValueError, SMTPReplyError) as exc:
                # TimeoutError is an OSError; ValueError is an over-long reply line.
                self._record_failure(exc)
                # After a failure the session state is unknown: start afresh.
                if conn is not None:
                    conn[1].close()
                    conn = None
                continue
            if not self.cfg.persist:
                await self._quit(*conn)
                conn = None
        if conn is not None:
            await self._quit(*conn)


async def run_load(cfg: LoadConfig) -> LoadResult:
    """Run the load described by `cfg` and return what was measured."""
    cfg.host = check_loopback(cfg.host)
    runner = _Runner(cfg)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    sessions = min(cfg.sessions, cfg.messages)
    await asyncio.gather(*(runner.session() for _ in range(sessions)))
    runner.result.elapsed_s = time.perf_counter() - t0
    runner.result.client_cpu_s = time.process_time() - cpu0
    return runner.result


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _proc_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue  # the process exited while we looked
        # comm (field 2) may contain spaces or parentheses: split after the last ')'.
        fields = stat.rsplit(b")", 1)[-1].split()
        if len(fields) >= 2:
            children.setdefault(int(fields[1]), []).append(int(name))
    if not os.path.exists(f"/proc/{root}"):
        return []
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _read_kb(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    found: dict[str, int] = {}
    with open(path) as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in keys:
                found[key] = int(rest.split()[0])
    return found


def tree_memory(root: int) -> dict[str, Any]:
    """RSS and PSS sums (MiB) and process count of `root` and all its descendants.

    RSS counts pages shared by forked children once per child; PSS divides
    them among the sharers and is the fair total for a prefork server. When
    smaps_rollup cannot be read (another user's process, old kernel), VmRSS
    stands in for both, which overstates PSS; `mem_fallback_procs` counts those.
    """
    rss_kb = pss_kb = procs = fallback = 0
    for pid in _proc_tree(root):
        try:
            try:
                vals = _read_kb(f"/proc/{pid}/smaps_rollup", ("Rss", "Pss"))
                rss, pss = vals["Rss"], vals["Pss"]
            except (OSError, KeyError, ValueError):
                vals = _read_kb(f"/proc/{pid}/status", ("VmRSS",))
                rss = pss = vals.get("VmRSS", 0)  # kernel threads have no VmRSS
                fallback += 1
        except (OSError, ValueError):
            continue  # gone meanwhile
        procs += 1
        rss_kb += rss
        pss_kb += pss
    return {
        "pid": root,
        "procs": procs,
        "rss_mib": round(rss_kb / 1024, 1),
        "pss_mib": round(pss_kb / 1024, 1),
        "mem_fallback_procs": fallback,
    }


def summarize(cfg: LoadConfig, result: LoadResult, memory: dict[str, Any] | None) -> dict[str, Any]:
    """One flat dict with everything reported (the --json object)."""
    lat = sorted(result.latencies)

    def ms(pct: float) -> float | None:
        value = percentile(lat, pct)
        return None if value is None else round(value * 1000, 3)

    elapsed = result.elapsed_s
    summary: dict[str, Any] = {
        "host": cfg.host,
        "port": cfg.port,
        "sessions": cfg.sessions,
        "messages": cfg.messages,
        "size": cfg.size,
        "body_bytes": len(build_body(cfg.size)),
        "persist": cfg.persist,
        "rcpts": cfg.rcpts,
        "ok": result.ok,
        "failed": result.failed,
        "quit_errors": result.quit_errors,
        "connections": result.connections,
        "elapsed_s": round(elapsed, 3),
        "msgs_per_s": round(result.ok / elapsed, 1) if elapsed > 0 else 0.0,
        "client_cpu_pct": round(100 * result.client_cpu_s / elapsed) if elapsed > 0 else 0,
        "p50_ms": ms(50),
        "p90_ms": ms(90),
        "p99_ms": ms(99),
        "failure_kinds": result.failure_kinds,
        "failure_samples": result.failure_samples,
    }
    if memory is not None:
        summary.update(memory)
    return summary


def format_plain(s: dict[str, Any]) -> str:
    """Human-readable report; the last line is msgs/s alone, for `tail -n1`."""
    size = "default" if s["size"] is None else s["size"]

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    persist = "yes" if s["persist"] else "no"
    out = [
        (
            f"load {s['host']}:{s['port']} sessions={s['sessions']} "
            f"messages={s['messages']} size={size} body_bytes={s['body_bytes']} "
            f"persist={persist} rcpts={s['rcpts']}"
        ),
        (
            f"ok={s['ok']} failed={s['failed']} quit_errors={s['quit_errors']} "
            f"connections={s['connections']} elapsed_s={s['elapsed_s']:.3f} "
            f"client_cpu_pct={s['client_cpu_pct']}"
        ),
        f"latency_ms p50={num(s['p50_ms'])} p90={num(s['p90_ms'])} p99={num(s['p99_ms'])}",
    ]
    if "procs" in s:
        out.append(
            f"memory pid={s['pid']} procs={s['procs']} rss_mib={s['rss_mib']:.1f} "
            f"pss_mib={s['pss_mib']:.1f} fallback_procs={s['mem_fallback_procs']}"
        )
    if s["failure_kinds"]:
        kinds = " ".join(f"{k!r}={v}" for k, v in sorted(s["failure_kinds"].items()))
        out.append(f"failure kinds: {kinds}")
        out.append(f"first failures ({len(s['failure_samples'])}):")
        out.extend(f"  {line}" for line in s["failure_samples"])
    out.append(f"{s['msgs_per_s']:.1f}")
    return "\n".join(out)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be 1 to 65535")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _size(text: str) -> int:
    value = int(text)
    if value == 1 or value < 0:
        raise argparse.ArgumentTypeError("must be 0 or at least 2")
    return value


def _host(text: str) -> str:
    try:
        return check_loopback(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> str:
    # Keep the envelope well-formed: no brackets, spaces or line breaks.
    if not text or any(c in text for c in "<> \r\n") or not text.isascii():
        raise argparse.ArgumentTypeError(f"not a plain ASCII address: {text!r}")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line (exits with status 2 on errors, as argparse does)."""
    p = argparse.ArgumentParser(
        prog="load.py",
        description="SMTP load generator (loopback only).",
    )
    p.add_argument("--host", type=_host, default="127.0.0.1",
                   help="loopback IP to connect to (default 127.0.0.1; ::1 works too)")
    p.add_argument("--port", type=_port, required=True, help="SMTP port")
    p.add_argument("--sessions", type=_positive_int, default=20, metavar="N",
                   help="concurrent SMTP sessions (default 20)")
    p.add_argument("--messages", type=_positive_int, default=5000, metavar="N",
                   help="messages in total (default 5000)")
    p.add_argument("--size", type=_size, default=None, metavar="BYTES",
                   help="body bytes after the headers, in 78-char lines (default: a tiny body)")
    p.add_argument("--persist", action="store_true",
                   help="one connection per session for all its messages")
    p.add_argument("--rcpts", type=_positive_int, default=1, metavar="N",
                   help="recipients per message (default 1)")
    p.add_argument("--from", dest="mail_from", type=_address, default="a@example.com",
                   metavar="ADDR",
                   help="envelope sender (default a@example.com)")
    p.add_argument("--to", dest="rcpt_to", type=_address, default="b@example.com",
                   metavar="ADDR",
                   help="envelope recipient (default b@example.com)")
    p.add_argument("--helo", type=_address, default="bench.client", metavar="NAME",
                   help="HELO name (default bench.client)")
    p.add_argument("--pid", type=_positive_int, default=None, metavar="PID",
                   help="server master PID: report RSS/PSS of it and its descendants")
    p.add_argument("--timeout", type=_seconds, default=30.0, metavar="SECS",
                   help="seconds allowed for connect+greeting+HELO, each transaction, and QUIT")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = parse_args(argv)
    cfg = LoadConfig(
        host=args.host, port=args.port, sessions=args.sessions, messages=args.messages,
        size=args.size, persist=args.persist, rcpts=args.rcpts, mail_from=args.mail_from,
        rcpt_to=args.rcpt_to, helo=args.helo, timeout=args.timeout,
    )
    result = asyncio.run(run_load(cfg))
    # Sampled right after the run, while the server still holds its loaded state.
    memory = tree_memory(args.pid) if args.pid is not None else None
    summary = summarize(cfg, result, memory)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_plain(summary))
    sys.stdout.flush()
    return 0 if result.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
