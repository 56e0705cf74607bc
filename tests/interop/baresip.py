"""A baresip 1.0.0 softphone for call interop tests, driven over its ``ctrl_tcp`` module.

Each phone gets its own config folder: G.711 only, a sine generator (``ausine``) as the microphone so what it
sends is a known tone, the ALSA ``null`` device as the loudspeaker (there is no sound card) and the ``sndfile``
audio filter, which writes every call's decoded received audio to ``dump-*-dec.wav`` in the folder. Commands
(``dial``, ``accept``, ``hangup``, ``hold``, ``resume``, ``transfer``, ``sndcode``) go to the ``menu`` module's
command table through ``ctrl_tcp``: netstring-framed JSON ``{"command", "params", "token"}``; the same connection
carries the UA events (``CALL_ESTABLISHED``, ``CALL_DTMF_START``, ``CALL_CLOSED`` ...) as JSON objects.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tests.interop.server import RunningServer
from tests.interop.sipp import free_port, free_port_both

MODULE_PATH = "/usr/lib/baresip/modules"
SAMPLE_RATE_HZ = 8000  # sndfile dumps the decoded stream at the codec rate: G.711, RFC 3551 §4.5.14
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 8.0
WAV_HEADER_SEARCH_BYTES = 512
PHONE_RTP_PORTS = "40000-49000"


class BaresipError(AssertionError):
    """baresip did not do what a test asked (no start, refused command, missing event)."""


@dataclass
class BaresipPhone:
    """One running baresip with one account, its control connection and everything it reported so far."""

    user: str
    folder: Path
    proc: subprocess.Popen[str]
    ctrl_port: int
    sock: socket.socket | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _buffer: bytearray = field(default_factory=bytearray)
    _token: int = 0

    # ---- control connection --------------------------------------------------------------------------------
    def connect(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BaresipError(f"baresip {self.user} exited {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                self.sock = socket.create_connection(("127.0.0.1", self.ctrl_port), timeout=1.0)
                return
            except OSError:
                time.sleep(0.05)
        raise BaresipError(f"baresip {self.user}: ctrl_tcp never listened on {self.ctrl_port}")

    def _pump(self, timeout: float) -> list[dict[str, Any]]:
        """Read what arrived within ``timeout`` seconds; returns the decoded netstring messages."""
        assert self.sock is not None
        self.sock.settimeout(max(timeout, 0.001))
        try:
            chunk = self.sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            chunk = b""
        if chunk:
            self._buffer += chunk
        messages: list[dict[str, Any]] = []
        while True:
            colon = self._buffer.find(b":")
            if colon <= 0:
                break
            length = int(self._buffer[:colon])
            end = colon + 1 + length
            if len(self._buffer) < end + 1:
                break
            messages.append(json.loads(self._buffer[colon + 1:end]))
            del self._buffer[:end + 1]  # the payload and its trailing ","
        for message in messages:
            if message.get("event"):
                self.events.append(message)
        return messages

    def command(self, command: str, params: str = "", timeout: float = 5.0) -> dict[str, Any]:
        """Run one command from the menu table and return its response object (``ok``, ``data``)."""
        assert self.sock is not None
        self._token += 1
        token = f"{self.user}-{self._token}"
        payload = json.dumps({"command": command, "params": params, "token": token}).encode()
        self.sock.sendall(b"%d:%s," % (len(payload), payload))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self._pump(deadline - time.monotonic()):
                if message.get("response") and message.get("token") == token:
                    if not message.get("ok"):
                        raise BaresipError(f"baresip {self.user}: {command} {params!r} refused: {message}")
                    return message
        raise BaresipError(f"baresip {self.user}: no response to {command} {params!r} in {timeout}s")

    def wait_event(self, kind: str, timeout: float = 10.0, count: int = 1, param: str | None = None
                   ) -> dict[str, Any]:
        """Wait until ``count`` events of type ``kind`` (and ``param``, when given) were seen; returns the last."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.events_of(kind, param)
            if len(seen) >= count:
                return seen[count - 1]
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.proc.poll() is not None:
                types = [e.get("type") for e in self.events]
                raise BaresipError(f"baresip {self.user}: {kind} x{count} not seen in {timeout}s; events: {types}")
            self._pump(min(remaining, 0.2))

    def events_of(self, kind: str, param: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == kind and (param is None or e.get("param") == param)]

    def drain(self, seconds: float) -> None:
        """Keep reading events for ``seconds`` (time for audio to flow)."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self._pump(min(remaining, 0.2))

    # ---- audio ---------------------------------------------------------------------------------------------
    def received_files(self) -> list[Path]:
        return sorted(self.folder.glob("dump-*-dec.wav"), key=lambda p: p.stat().st_mtime_ns)

    def received_audio(self, index: int = -1) -> npt.NDArray[np.int16]:
        """Decoded audio the phone received in its ``index``-th call so far, int16 mono 8 kHz, shape (n,).

        Read while the call may still run: libsndfile fills in the WAV sizes only on close, so the data is taken
        from the ``data`` chunk to the end of the file.
        """
        files = self.received_files()
        if not files:
            raise BaresipError(f"baresip {self.user}: no received-audio dump in {self.folder}")
        raw = files[index].read_bytes()
        start = raw.find(b"data", 0, WAV_HEADER_SEARCH_BYTES)
        if start < 0:
            return np.zeros(0, dtype=np.int16)
        body = raw[start + 8:]
        return np.frombuffer(body[: len(body) // 2 * 2], dtype="<i2").astype(np.int16)

    def audio_mark(self) -> int:
        """How many samples the current call's received-audio dump holds now (a position to slice at later)."""
        return len(self.received_audio()) if self.received_files() else 0

    # ---- lifetime ------------------------------------------------------------------------------------------
    def output(self) -> str:
        path = self.folder / "baresip.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM (baresip hangs up and unregisters), SIGKILL when that takes too long."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def write_config(folder: Path, server: RunningServer, user: str, password: str, *, tone_hz: int,
                 auto_answer: bool, transport: str = "udp", port: int | None = None, extra_config: str = "",
                 account_params: str = "") -> int:
    """Write ``config`` and ``accounts`` for one phone; returns the ctrl_tcp port.

    ``transport``/``port``: how it reaches the server (``tls`` with the server's TLS port); ``extra_config`` lines
    are appended to ``config`` (``module srtp.so``, ``sip_cafile ...``), ``account_params`` to the account
    (``;mediaenc=srtp-mand``)."""
    folder.mkdir(parents=True, exist_ok=True)
    ctrl_port = free_port(kind=socket.SOCK_STREAM)
    (folder / "config").write_text(
        f"module_path {MODULE_PATH}\n"
        f"sip_listen 127.0.0.1:{free_port_both()}\n"  # baresip binds UDP, TCP and TLS (+1)
        "net_interface 127.0.0.1\n"  # SDP c= and RTP on loopback, not the host's LAN address
        f"audio_source ausine,{tone_hz}\n"
        "audio_player alsa,null\n"
        "ausrc_srate 48000\nausrc_channels 2\n"  # ausine only generates 48 kHz stereo; baresip resamples
        f"snd_path {folder}\n"
        f"rtp_ports {PHONE_RTP_PORTS}\n"  # clear of ccpbx's default RTP range (10000-20000)
        "module g711.so\nmodule ausine.so\nmodule alsa.so\nmodule sndfile.so\n"
        "module_app account.so\nmodule_app menu.so\nmodule_app ctrl_tcp.so\n"
        f"ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n{extra_config}")
    answer = ";answermode=auto" if auto_answer else ""
    (folder / "accounts").write_text(
        f"<sip:{user}@{server.host}:{port or server.port};transport={transport}>;auth_pass={password};regint=300;"
        f"audio_codecs=PCMU{answer}{account_params}\n")
    return ctrl_port


@contextmanager
def baresip_phone(binary: str, server: RunningServer, folder: Path, user: str, password: str, *, tone_hz: int,
                  auto_answer: bool = False, lifetime_s: int = 60, transport: str = "udp", port: int | None = None,
                  extra_config: str = "", account_params: str = "") -> Iterator[BaresipPhone]:
    """Start baresip, wait until it registered as ``user``; it sends a ``tone_hz`` sine in every call.

    The process is stopped (SIGTERM, then SIGKILL) on exit whatever happened. The keywords after
    ``lifetime_s`` go to :func:`write_config`.
    """
    ctrl_port = write_config(folder, server, user, password, tone_hz=tone_hz, auto_answer=auto_answer,
                             transport=transport, port=port, extra_config=extra_config,
                             account_params=account_params)
    registered = rf"sip\.register\.ok\s.*aor={user} contacts=1"
    before = len(re.findall(registered, server.log))  # the server may outlive earlier phones of this user
    with (folder / "baresip.out").open("w") as out:
        proc = subprocess.Popen([binary, "-4", "-f", str(folder), "-t", str(lifetime_s)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    phone = BaresipPhone(user, folder, proc, ctrl_port)
    try:
        phone.connect()
        server.wait_for_log(registered, timeout=START_TIMEOUT_S, count=before + 1)
        yield phone
    finally:
        phone.stop()


def dominant_frequency(pcm: npt.NDArray[np.int16], rate_hz: int = SAMPLE_RATE_HZ) -> float:
    """Frequency (Hz) of the strongest bin of the Hann-windowed spectrum of ``pcm`` (int16, shape (n,))."""
    if len(pcm) < 2:
        return 0.0
    x = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1.0 / rate_hz)[int(np.argmax(spectrum))])


def rms(pcm: npt.NDArray[np.int16]) -> float:
    """Root mean square of ``pcm`` (int16, shape (n,)) in sample units; 0.0 for an empty array."""
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


def spectral_peaks(pcm: npt.NDArray[np.int16], count: int, rate_hz: int = SAMPLE_RATE_HZ,
                   min_separation_hz: float = 60.0) -> list[float]:
    """Frequencies (Hz) of the ``count`` strongest peaks of the Hann-windowed spectrum of ``pcm``, strongest first.

    A peak's neighbours within ``min_separation_hz`` (its window leakage) are not peaks of their own.
    """
    if len(pcm) < 2:
        return []
    x = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate_hz)
    peaks: list[float] = []
    for index in np.argsort(spectrum)[::-1]:
        f = float(freqs[index])
        if all(abs(f - p) >= min_separation_hz for p in peaks):
            peaks.append(f)
            if len(peaks) == count:
                break
    return peaks


def band_level(pcm: npt.NDArray[np.int16], frequency_hz: float, rate_hz: int = SAMPLE_RATE_HZ,
               half_width_hz: float = 20.0) -> float:
    """The strongest magnitude of the Hann-windowed spectrum of ``pcm`` within ``half_width_hz`` of a frequency."""
    x = pcm.astype(np.float64)
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1.0 / rate_hz)
    band = np.abs(freqs - frequency_hz) <= half_width_hz
    return float(spectrum[band].max()) if band.any() else 0.0
