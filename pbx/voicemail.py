"""Voicemail on the PBX: ``voicemail:EXT`` destinations, the ``*97`` mailbox menu, message-waiting lamps, e-mail.

The flows themselves are :mod:`ccpbx.ivr.voicemail` (run through the IVR runner, so hang-ups, transfers and
failures behave as for any flow); this module gives them their :class:`~ccpbx.ivr.voicemail.Mailbox`: rows in
SQLite (``voicemail_messages``, ``voicemail_boxes``) and WAV files under ``<data dir>/voicemail/<box>/``.

- The busy greeting plays when the call was forwarded because the extension was busy (``Call.diversion``), the
  unavailable greeting otherwise; an owner's recorded greetings replace the default prompts.
- PINs are stored as salted PBKDF2 hashes, never in clear (``ccpbx voicemail pin EXT`` sets one).
- MWI (RFC 3842) is :mod:`ccpbx.pbx.mwi`, fed by :meth:`Voicemail.on_change` and :attr:`Voicemail.counts`.
- A new message is e-mailed to the box's address (``ccpbx voicemail email``) with the WAV attached, over SMTP
  in a worker thread; a failure is logged and the message stays in the box.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import smtplib
import time
import wave
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from ccpbx.ivr.voicemail import VoicemailSettings, VoiceMessage, leave_message, mailbox_menu
from ccpbx.pbx.calls import Call
from ccpbx.pbx.config import VoicemailConfig
from ccpbx.pbx.destinations import Finished, Outcome, Redirect
from ccpbx.pbx.dialplan import FeatureRequest
from ccpbx.pbx.flows import IvrFlows
from ccpbx.pbx.log import get_logger
from ccpbx.pbx.store import Store, VoicemailRow

__all__ = [
    "StoreMailbox",
    "Voicemail",
    "hash_pin",
    "verify_pin",
]

log = get_logger("ccpbx.voicemail")

PBKDF2_ROUNDS = 100_000


def hash_pin(pin: str) -> str:
    """A salted PBKDF2-SHA256 hash of ``pin``: ``pbkdf2$ROUNDS$SALT$HASH``."""
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", pin.encode(), bytes.fromhex(salt), PBKDF2_ROUNDS).hex()
    return f"pbkdf2${PBKDF2_ROUNDS}${salt}${digest}"


def verify_pin(pin: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        scheme, rounds, salt, digest = stored.split("$")
        if scheme != "pbkdf2":
            return False
        mine = hashlib.pbkdf2_hmac("sha256", pin.encode(), bytes.fromhex(salt), int(rounds)).hex()
    except ValueError:
        return False
    return hmac.compare_digest(mine, digest)


def wav_seconds(path: Path) -> float:
    try:
        with wave.open(str(path)) as w:
            return float(w.getnframes()) / float(w.getframerate() or 8000)
    except (OSError, EOFError, wave.Error):
        return 0.0


def _message(row: VoicemailRow) -> VoiceMessage:
    return VoiceMessage(row.id, row.mailbox, row.folder, row.caller, row.caller_name, row.received_at,
                        row.duration_s, Path(row.path))


class StoreMailbox:
    """One box over the store and the data directory (:class:`ccpbx.ivr.voicemail.Mailbox`)."""

    def __init__(self, number: str, service: Voicemail) -> None:
        self._number = number
        self.service = service

    @property
    def number(self) -> str:
        return self._number

    @property
    def store(self) -> Store:
        assert self.service.store is not None
        return self.service.store

    def _dir(self) -> Path:
        path = self.service.root / self._number
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def greeting(self, kind: str) -> Path | None:
        box = await self.store.get_voicebox(self._number)
        name = box.greeting_busy if kind == "busy" else box.greeting_unavailable
        if name is None or not Path(name).is_file():
            return None
        return Path(name)

    async def store_greeting(self, kind: str, path: Path) -> None:
        target = self._dir() / f"greeting-{'busy' if kind == 'busy' else 'unavailable'}.wav"
        os.replace(path, target)
        field = "greeting_busy" if kind == "busy" else "greeting_unavailable"
        await self.store.update_voicebox(self._number, **{field: str(target)})
        log.info("voicemail.greeting.recorded", mailbox=self._number, kind=kind)

    async def deposit(self, path: Path, caller: str, caller_name: str) -> VoiceMessage | None:
        duration = wav_seconds(path)
        if duration < self.service.settings.min_message_s:
            with contextlib.suppress(OSError):
                path.unlink()
            log.info("voicemail.message.too_short", mailbox=self._number, seconds=round(duration, 2))
            return None
        received = time.time()
        target = self._dir() / f"msg-{time.strftime('%Y%m%d-%H%M%S', time.localtime(received))}-" \
                               f"{secrets.token_hex(3)}.wav"
        os.replace(path, target)
        message_id = await self.store.add_voicemail(self._number, "new", caller, caller_name, received,
                                                    round(duration, 2), str(target))
        message = VoiceMessage(message_id, self._number, "new", caller, caller_name, received, duration, target)
        log.info("voicemail.message.left", mailbox=self._number, caller=caller, seconds=round(duration, 2),
                 path=str(target))
        await self.service.refresh(self._number)
        self.service.mail(message)
        return message

    async def messages(self, folder: str) -> list[VoiceMessage]:
        return [_message(r) for r in await self.store.list_voicemail(self._number, folder)]

    async def move(self, message: VoiceMessage, folder: str) -> None:
        await self.store.set_voicemail_folder(message.id, folder)
        await self.service.refresh(self._number)

    async def delete(self, message: VoiceMessage) -> None:
        await self.store.delete_voicemail(message.id)
        with contextlib.suppress(OSError):
            message.path.unlink()
        log.info("voicemail.message.deleted", mailbox=self._number, id=message.id)
        await self.service.refresh(self._number)

    async def has_pin(self) -> bool:
        return (await self.store.get_voicebox(self._number)).pin_hash is not None

    async def check_pin(self, pin: str) -> bool:
        guard = self.service.pin_guard
        if guard.locked(self._number):
            # a box guessed at too often is closed to every PIN, the right one too, until the lock expires:
            # three tries a call would otherwise let a redialling guesser through a 4-digit PIN in a day
            log.warning("voicemail.pin.locked", mailbox=self._number)
            return False
        # PBKDF2 costs ~50 ms of CPU: in a thread, or every call's media would miss ticks while it runs
        ok = await asyncio.to_thread(verify_pin, pin, (await self.store.get_voicebox(self._number)).pin_hash)
        if ok:
            guard.succeeded(self._number)
        else:
            guard.failed(self._number)
            log.warning("voicemail.pin.wrong", mailbox=self._number, locked=guard.locked(self._number))
        return ok

    async def set_pin(self, pin: str) -> None:
        await self.store.update_voicebox(self._number, pin_hash=await asyncio.to_thread(hash_pin, pin))
        log.info("voicemail.pin.changed", mailbox=self._number)


class PinGuard:
    """Wrong PINs per box across calls: ``max_failures`` within ``window_s`` lock the box for ``lock_s``."""

    def __init__(self, max_failures: int = 6, window_s: float = 600.0, lock_s: float = 900.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lock_s = lock_s
        self.clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked(self, box: str) -> bool:
        until = self._locked_until.get(box)
        if until is None:
            return False
        if self.clock() >= until:
            del self._locked_until[box]
            return False
        return True

    def failed(self, box: str) -> None:
        now = self.clock()
        recent = [t for t in self._failures.get(box, []) if now - t < self.window_s] + [now]
        self._failures[box] = recent
        if len(recent) >= self.max_failures:
            self._locked_until[box] = now + self.lock_s
            self._failures.pop(box, None)
            log.warning("voicemail.pin.lockout", mailbox=box, seconds=self.lock_s)

    def succeeded(self, box: str) -> None:
        self._failures.pop(box, None)


class Voicemail:
    """The ``voicemail`` destination handler, the ``*97`` feature and the boxes' message counts."""

    def __init__(self, config: VoicemailConfig, flows: IvrFlows, data_dir: Path) -> None:
        self.config = config
        self.flows = flows
        self.root = data_dir / "voicemail"
        self.settings = VoicemailSettings(max_message_s=config.max_message, min_message_s=config.min_message,
                                          silence_stop_s=config.silence_stop, max_messages=config.max_messages,
                                          min_pin_digits=config.min_pin_digits)
        self.store: Store | None = None
        self.extensions: Callable[[], set[str]] = set
        self.counts: dict[str, tuple[int, int]] = {}
        self.listeners: list[Callable[[str], None]] = []
        self._mail_tasks: set[asyncio.Future[None]] = set()
        self.pin_guard = PinGuard()

    async def start(self, store: Store, extensions: Callable[[], set[str]]) -> None:
        self.store = store
        self.extensions = extensions
        self.counts = await store.voicemail_counts()

    def on_change(self, listener: Callable[[str], None]) -> None:
        """``listener(box)`` whenever a box's counts change (the lamps)."""
        self.listeners.append(listener)

    async def refresh(self, box: str) -> None:
        assert self.store is not None
        counts = (await self.store.voicemail_counts()).get(box, (0, 0))
        if self.counts.get(box, (0, 0)) != counts:
            self.counts[box] = counts
            for listener in self.listeners:
                listener(box)

    def mailbox(self, box: str) -> StoreMailbox:
        return StoreMailbox(box, self)

    # -- destination and feature --------------------------------------------------------------------------------
    async def __call__(self, call: Call, target: str, number: str) -> Outcome:
        if self.store is None or target not in self.extensions():
            await call.reject(404, "No such mailbox")
            return Finished()
        reason = call.diversion[0] if call.diversion is not None else "unavailable"
        box = self.mailbox(target)
        return await self.flows.run(call, number, lambda flow: leave_message(flow, box, self.settings, reason))

    async def feature(self, call: Call, request: FeatureRequest) -> None:
        """``*97``: the caller's own box; ``*97`` + a number: that box (its PIN is always asked)."""
        own = call.caller.number
        target = request.argument or own
        if self.store is None or target not in self.extensions():
            await call.reject(404, "No such mailbox")
            return
        box = self.mailbox(target)
        outcome = await self.flows.run(call, target, lambda flow: mailbox_menu(
            flow, box, self.settings, own=target == own))
        router = self.flows.router
        if isinstance(outcome, Redirect) and not call.finished:  # "8": call the caller back
            if await router.route_to(call, outcome.destination, outcome.number):
                await router.converse(call)
        if not call.finished:
            call.hangup()

    # -- e-mail -----------------------------------------------------------------------------------------------------
    def mail(self, message: VoiceMessage) -> None:
        if not self.config.smtp_host or self.store is None:
            return
        task = asyncio.ensure_future(self._mail(message))
        self._mail_tasks.add(task)
        task.add_done_callback(self._mail_tasks.discard)

    async def _mail(self, message: VoiceMessage) -> None:
        assert self.store is not None
        address = (await self.store.get_voicebox(message.mailbox)).email
        if not address:
            return
        try:
            await asyncio.to_thread(self._send_mail, address, message)
            log.info("voicemail.mail.sent", mailbox=message.mailbox, to=address, id=message.id)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("voicemail.mail.failed", mailbox=message.mailbox, to=address, error=str(exc))

    def _send_mail(self, address: str, message: VoiceMessage) -> None:
        cfg = self.config
        mail = EmailMessage()
        who = f"{message.caller_name} <{message.caller}>" if message.caller_name else message.caller or "unknown"
        mail["Subject"] = f"New voicemail from {who} ({round(message.duration_s)} s)"
        mail["From"] = cfg.smtp_from
        mail["To"] = address
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(message.received_at))
        mail.set_content(f"Mailbox {message.mailbox} has a new message.\n\nFrom: {who}\nReceived: {when}\n"
                         f"Length: {message.duration_s:.1f} s\n")
        mail.add_attachment(message.path.read_bytes(), maintype="audio", subtype="wav",
                            filename=message.path.name)
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=30) as smtp:
            if cfg.smtp_starttls:
                smtp.starttls()
            if cfg.smtp_username:
                smtp.login(cfg.smtp_username, cfg.smtp_password)
            smtp.send_message(mail)

    async def stop(self) -> None:
        if self._mail_tasks:
            await asyncio.wait(self._mail_tasks, timeout=5)
