"""A local SMTP sink for the voicemail e-mail tests: the RFC 5321 subset ``smtplib`` speaks, in a thread.

It accepts every envelope and keeps each message's bytes (dot-unstuffed), so a test can parse what the server
sent with :mod:`email`. Running in its own thread, it serves a ``ccpbx serve`` subprocess and an in-process
server alike (whose ``smtplib`` runs in a worker thread too).
"""

from __future__ import annotations

import email
import email.policy
import socketserver
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from types import TracebackType


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes

    def parsed(self) -> EmailMessage:
        message = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        return message


@dataclass
class SmtpSink:
    """``with SmtpSink() as sink:`` listens on ``sink.port`` (loopback) until the block ends."""

    messages: list[Received] = field(default_factory=list)
    port: int = 0
    _server: socketserver.ThreadingTCPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> SmtpSink:
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str) -> None:
                self.wfile.write(line.encode() + b"\r\n")

            def handle(self) -> None:
                self.reply("220 sink ESMTP")
                sender, recipients = "", []
                while line := self.rfile.readline():
                    verb = line.decode(errors="replace").strip()
                    upper = verb.upper()
                    if upper.startswith(("EHLO", "HELO")):
                        self.reply("250 sink")
                    elif upper.startswith("MAIL FROM:"):
                        sender, recipients = verb[10:].strip(" <>"), []
                        self.reply("250 OK")
                    elif upper.startswith("RCPT TO:"):
                        recipients.append(verb[8:].strip(" <>"))
                        self.reply("250 OK")
                    elif upper == "DATA":
                        self.reply("354 end with <CRLF>.<CRLF>")
                        body = bytearray()
                        while (chunk := self.rfile.readline()) and chunk not in (b".\r\n", b".\n"):
                            body += chunk[1:] if chunk.startswith(b"..") else chunk
                        with sink._lock:
                            sink.messages.append(Received(sender, recipients, bytes(body)))
                        self.reply("250 queued")
                    elif upper == "QUIT":
                        self.reply("221 bye")
                        return
                    elif upper in ("RSET", "NOOP"):
                        self.reply("250 OK")
                    else:
                        self.reply("502 not implemented")

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._server is not None:  # may be called early, to stand for a mail server that is down
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[Received]:
        """Block (a thread, not the loop: use ``asyncio.to_thread``) until ``count`` messages arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"{count} e-mail(s) expected, {len(self.messages)} arrived in {timeout} s")
