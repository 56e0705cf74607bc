"""The sans-IO media engine: every channel's audio processed in one vectorized 20 ms tick.

A *channel* is one RTP stream pair (one call leg's media). Channels live in a struct of arrays indexed by
slot (the channel id); per-packet work in :meth:`MediaEngine.receive` is a header unpack and a jitter-buffer
store, and everything else happens once per tick for all channels at once:

1. pop one frame per receiving channel from the :class:`~ccpbx.media.jitter.JitterStore` (all at once);
2. decode per codec group (G.711 tables, ITU-T G.711), conceal missing frames by repeating the last frame
   at half the amplitude per consecutive miss (silence after ``MAX_CONCEAL_FRAMES``);
3. in-band DTMF detection (ITU-T Q.24 Goertzel) on the flagged rows;
4. mix (:mod:`ccpbx.media.mixer`) and add the players (prompts, music on hold, tones);
5. feed the recorders with what each recorded channel said;
6. encode per codec group, build all RTP headers (RFC 3550 §5.1) as one structured array, advance the
   sequence numbers and timestamps of all rows with vector ops, and queue one packet per sending row.

Relay fast path: a two-party bridge of two same-codec sendrecv channels with nothing else attached (no
player, recorder, in-band DTMF detection, monitor, whisperer or DTMF being sent) skips decode/mix/encode.
Each received packet is re-sent at arrival time on the other leg with that leg's own SSRC and with sequence
number and timestamp shifted by per-direction offsets chosen so the other leg's numbering continues without
a gap (a foreign SSRC is never forwarded, RFC 3550 §8.2; an inbound SSRC change recomputes the offsets).
Relayed packets bypass the jitter buffer: the network jitter is passed through to the far end's own jitter
buffer instead of being absorbed here, no delay is added, and reordering or loss are forwarded as they are
(the offsets preserve the gaps). Telephone-event packets are relayed too (and still reported as
:class:`DtmfReceived`). When the bridge gains anything else, the channels return to the audio path at the
next tick with the marker bit set on the first packet. A steady relayed packet's rewrite is also kept as a
**route** (:data:`ROUTE`: one 32-byte row per channel in :attr:`MediaEngine.routes`) for the transport, which
relays from the row alone on a connected socket (one cache line instead of a dozen objects a packet) and
counts there; the engine folds those counts into its own when it reads them (statistics, RTCP, RTP timeouts at
each tick) and forgets a route whenever anything it was made of changes (:meth:`MediaEngine.unroute`). A tick
with no channel on the audio path and nothing playing, recording or sending digits runs none of the stages
above: it advances the RTP clocks and checks the RTCP reports and RTP timeouts only.

RTCP (RFC 3550 §6): every channel queues a compound SR (when it has sent) or RR, with one report block about
the far end's stream and an SDES CNAME, about every ``rtcp_interval_ms`` (randomised 0.5-1.5x, §6.3.1
simplified for two-party sessions), addressed to the RTP address's port + 1 (§11) unless overridden or
latched; closing a channel queues a BYE (§6.6), unless it never sent RTP or RTCP (§6.3.7). The edge drains
them with :meth:`MediaEngine.outgoing_rtcp` and feeds received RTCP to :meth:`MediaEngine.receive_rtcp`, whose
report blocks about our stream become the ``rtt_ms``/``remote_*`` fields of :class:`ChannelStats`. Relayed
channels do not feed the jitter store, so their report blocks stop at the last audio-path packet.

Nothing here does IO except that a recorder writes its file (through the recorder factory); time is the
``now_ms`` passed in (integer monotonic milliseconds).
"""

from __future__ import annotations

import array
import enum
import heapq
import itertools
import os
import random
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from .errors import MediaConfigError, MediaError
from .g711 import Codec
from .jitter import JitterStore
from .mixer import Mixer, Role, RoleKind, mix
from .rtp import (
    RTP_HEADER,
    Bye,
    ReceiverReport,
    ReportBlock,
    RtcpPacket,
    SenderReport,
    SourceDescription,
    parse_rtcp,
    seq_diff,
    serialize_rtcp,
)
from .source import FRAME_MS, FRAME_SAMPLES, AudioSource
from .telephone_event import TelephoneEventReceiver, TelephoneEventSender

__all__ = [
    "Address",
    "ChannelStats",
    "Codec",
    "Direction",
    "DtmfReceived",
    "DtmfSource",
    "MediaEngine",
    "MediaEvent",
    "PlaybackFinished",
    "Role",
    "RtpTimeout",
    "SourceChanged",
]

Address = tuple[str, int]

RTP_VERSION_BITS = 0x80  # V=2, P=0, X=0, CC=0
RTP_HEADER_BYTES = 12
PACKET_BYTES = RTP_HEADER_BYTES + FRAME_SAMPLES  # G.711 at 20 ms
# A channel's route (see the module docstring), little-endian, 32 bytes: the datagram size it relays (0: no
# route), the payload type it takes, the peer's payload type, the sequence offset, the peer's next sequence
# number, the packets relayed on it, the SSRC it takes, the timestamp offset, the peer's SSRC, the peer channel.
ROUTE = struct.Struct("<HBBHHIIIIi4x")
ROUTE_BYTES = ROUTE.size
ROUTE_TAIL = struct.Struct("<HI")  # (next sequence number, packets), what a relayed packet updates
ROUTE_TAIL_OFFSET = 6
_NO_ROUTE = bytes(ROUTE_BYTES)
INITIAL_CAPACITY = 64
LATCH_PACKETS = 3  # consecutive packets from a new address before re-latching (symmetric RTP, RFC 4961)
SETTLE_PACKETS = 2  # packets taken from the latched address before the stream counts as settled there
RTP_TIMEOUT_MS = 30_000
DTMF_DEDUP_MS = 400  # an in-band and an RFC 4733 report of the same digit this close are one key press
MAX_CONCEAL_FRAMES = 5  # 100 ms of fading repetition, then silence
RTCP_INTERVAL_MS = 5000  # RFC 3550 §6.2 minimum interval, used as the nominal one (two-party sessions)
NTP_UNIX_OFFSET_S = 2_208_988_800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
HEADER_DTYPE = np.dtype([("b0", "u1"), ("b1", "u1"), ("seq", ">u2"), ("ts", ">u4"), ("ssrc", ">u4")])
#: One whole G.711 RTP packet: the fixed header (RFC 3550 §5.1) followed by a 20 ms payload.
PACKET_DTYPE = np.dtype([*HEADER_DTYPE.descr, ("payload", "u1", (FRAME_SAMPLES,))])
_CODECS: tuple[Codec, ...] = tuple(Codec)
_CODEC_INDEX = {c: i for i, c in enumerate(_CODECS)}


def _transcode_table(src: Codec, dst: Codec) -> bytes:
    """256-byte ``bytes.translate`` table: one G.711 code of ``src`` to the ``dst`` code of the same sample."""
    return dst.encode(src.decode(np.arange(256, dtype=np.uint8))).tobytes()


# A peer may switch among the codecs both sides listed (RFC 3264 §5.1); such a packet is converted to the
# channel's codec on arrival, one table lookup per byte, so the tick still decodes one codec per row.
_TRANSCODE = {(a, b): _transcode_table(a, b) for a in _CODECS for b in _CODECS if a is not b}
# RFC 3551 §4.5: receivers should accept packets of 10 to 60 ms (here up to 60 ms of 8 kHz G.711).
MAX_PACKET_SAMPLES = 480
MAX_PARTIAL_FRAMES = 8  # frames waiting for the rest of their samples (a bound: they normally wait until due)


class Direction(enum.Enum):
    """Media direction of a channel from the engine's side (the SDP attribute we put in our own SDP,
    RFC 3264 §6.1): SENDONLY = we send (e.g. music on hold) and ignore what arrives."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self is Direction.SENDRECV or self is Direction.SENDONLY

    @property
    def receives(self) -> bool:
        return self is Direction.SENDRECV or self is Direction.RECVONLY


_DIRECTIONS: tuple[Direction, ...] = tuple(Direction)
_SENDRECV = _DIRECTIONS.index(Direction.SENDRECV)
# Indexed by a channel's direction code: whether it receives / sends (one gather builds a mask, no set test).
_DIR_RECEIVES = np.array([d.receives for d in _DIRECTIONS], dtype=bool)
_DIR_SENDS = np.array([d.sends for d in _DIRECTIONS], dtype=bool)


class DtmfSource(enum.Enum):
    """How a digit arrived: RFC 4733 telephone-event packets or in-band tones (ITU-T Q.24)."""

    RFC4733 = "rfc4733"
    INBAND = "inband"


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    channel: int
    digit: str
    source: DtmfSource


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    channel: int
    player: int


@dataclass(frozen=True, slots=True)
class RtpTimeout:
    """No RTP arrived for ``RTP_TIMEOUT_MS`` on a receiving channel (reported once until packets resume)."""

    channel: int


@dataclass(frozen=True, slots=True)
class SourceChanged:
    """Symmetric RTP latched onto a new remote address; packets to this channel now go to ``address``."""

    channel: int
    address: Address


MediaEvent = DtmfReceived | PlaybackFinished | RtpTimeout | SourceChanged


@dataclass(frozen=True, slots=True)
class ChannelStats:
    packets_in: int
    packets_out: int
    bad: int
    lost: int
    late: int
    duplicates: int
    jitter_ms: float
    depth_ms: int
    relayed: int
    #: Round-trip time from the last report block about our stream (RFC 3550 §6.4.1 LSR/DLSR), ms.
    rtt_ms: float | None = None
    #: The far end's fraction of our packets lost (0..1) in its last reception report.
    remote_fraction_lost: float | None = None
    #: The far end's interarrival jitter of our stream in its last reception report, ms.
    remote_jitter: float | None = None
    #: The far end's cumulative count of our packets lost, from its last reception report.
    remote_lost: int | None = None
    rtcp_sent: int = 0
    rtcp_received: int = 0
    #: The far end sent an RTCP BYE (RFC 3550 §6.6).
    remote_bye: bool = False


class FrameSink(Protocol):
    """What a recorder must offer (``media.recorder.WavRecorder`` does)."""

    def write(self, frames: npt.NDArray[np.int16]) -> None: ...

    def close(self) -> None: ...


RecorderFactory = Callable[[str | os.PathLike[str], int], FrameSink]


def _wav_recorder(path: str | os.PathLike[str], channels: int) -> FrameSink:
    from .recorder import WavRecorder  # imported lazily: only an engine that records needs it

    return WavRecorder(path, channels)


class _Channel:
    """Per-packet state of one channel (the per-tick state is in the engine's arrays)."""

    __slots__ = (
        "alt",
        "bad",
        "cand",
        "cand_count",
        "codec",
        "groups",
        "last_inband",
        "last_rfc",
        "latched",
        "packets_in",
        "pt",
        "relay_in_ssrc",
        "relay_peer",
        "relay_seq_off",
        "relay_ts_off",
        "relayed",
        "remote",
        "remote_bye",
        "remote_fraction_lost",
        "remote_jitter",
        "remote_lost",
        "rf_anchor",
        "rf_partial",
        "rf_seq0",
        "rf_ssrc",
        "rr_expected_prior",
        "rr_received_prior",
        "rtcp_from",
        "rtcp_received",
        "rtcp_remote",
        "rtcp_sent",
        "rtt_ms",
        "rx_samples",
        "sr_at",
        "sr_mid",
        "ssrc",
        "te_pt",
        "te_rx",
        "te_ts",
        "te_tx",
        "tx_buf",
        "tx_marker",
        "tx_samples",
        "tx_ts",
    )

    def __init__(self, codec: Codec, remote: Address | None, te_pt: int | None) -> None:
        self.codec = codec
        self.pt = codec.payload_type
        self.te_pt = -1 if te_pt is None else te_pt
        self.alt: dict[int, bytes] = {}  # other audio payload types we accept -> table converting to ``codec``
        # re-framing packets of other than 20 ms into the engine's frames, aligned by RTP timestamp
        self.rf_ssrc = -1
        self.rf_anchor = 0  # RTP timestamp where frame 0 of this source starts
        self.rf_seq0 = 0  # sequence number given to frame 0
        self.rf_partial: dict[int, tuple[bytearray, int]] = {}  # frame index -> (codes, samples filled)
        # sending at the packet time the peer asked for (a=ptime) when it is not 20 ms: frames wait here
        self.tx_samples = FRAME_SAMPLES
        self.rx_samples = 0  # size of the audio packets last relayed from this channel (0: none yet)
        self.tx_buf = bytearray()
        self.tx_ts = 0  # RTP timestamp of tx_buf's first sample
        self.tx_marker = False
        self.remote = remote
        self.latched = False
        self.cand: Address | None = None
        self.cand_count = 0
        self.te_rx = TelephoneEventReceiver()
        self.te_tx: TelephoneEventSender | None = None
        self.te_ts = 0
        self.packets_in = 0
        self.bad = 0
        self.relayed = 0
        self.relay_peer = -1
        self.ssrc = 0  # ours (the engine sets it when it opens the channel; the _ssrc row holds it too)
        self.relay_in_ssrc = -1
        self.relay_seq_off = 0
        self.relay_ts_off = 0
        self.groups: set[int] = set()
        self.last_rfc: tuple[str, int] = ("", -(10**9))
        self.last_inband: tuple[str, int] = ("", -(10**9))
        # RTCP (RFC 3550 §6): where reports go, what the last SR we received said, the far end's view of us.
        self.rtcp_remote: Address | None = None  # set explicitly (SDP a=rtcp, RFC 3605)
        self.rtcp_from: Address | None = None  # where the far end's RTCP comes from (symmetric, like RTP)
        self.rtcp_sent = 0
        self.rtcp_received = 0
        self.sr_mid = 0  # middle 32 bits of the NTP timestamp of the last SR received (LSR)
        self.sr_at = 0  # our now_ms when it arrived
        self.rr_expected_prior = 0  # RFC 3550 §A.3 interval bookkeeping
        self.rr_received_prior = 0
        self.rtt_ms: float | None = None
        self.remote_fraction_lost: float | None = None
        self.remote_jitter: float | None = None
        self.remote_lost: int | None = None
        self.remote_bye = False


@dataclass(slots=True)
class _Player:
    pid: int
    source: AudioSource
    mix: bool


class _MonitoredSink:
    """A recorder's sink that also shows each frame to a watcher."""

    def __init__(self, sink: FrameSink, monitor: Callable[[npt.NDArray[np.int16]], None]) -> None:
        self.sink = sink
        self.monitor = monitor

    def write(self, frames: npt.NDArray[np.int16]) -> None:
        self.sink.write(frames)
        self.monitor(frames)

    def close(self) -> None:
        self.sink.close()


@dataclass(slots=True)
class _Recorder:
    channels: tuple[int, ...]  # one per source; -1 once that channel closed
    heard: tuple[bool, ...]  # per source: what the channel hears (its mix, prompts included), else what it says
    stereo: bool
    sink: FrameSink


class MediaEngine:
    """Sans-IO media engine; see the module docstring.

    Parameters
    ----------
    relay : enable the packet-relay fast path for plain same-codec two-party bridges
    rtp_timeout_ms : silence on a receiving channel after which :class:`RtpTimeout` is reported
    rng : source of SSRCs and initial sequence numbers/timestamps (RFC 3550 §5.1 wants them random)
    rtcp_interval_ms : nominal RTCP report interval per channel; each report is scheduled 0.5-1.5 times it
        after the previous one (RFC 3550 §6.3.1, simplified for two-party sessions: no bandwidth scaling)
    recorder_factory : ``(path, channels) -> FrameSink``, defaults to ``media.recorder.WavRecorder``
    """

    def __init__(
        self,
        *,
        relay: bool = True,
        rtp_timeout_ms: int = RTP_TIMEOUT_MS,
        rng: random.Random | None = None,
        recorder_factory: RecorderFactory | None = None,
        capacity: int = INITIAL_CAPACITY,
        rtcp_interval_ms: int = RTCP_INTERVAL_MS,
    ) -> None:
        from .dtmf import DtmfDetector

        self.relay_enabled = relay
        # told when a channel enters or leaves the relay fast path (a media worker mirrors it to its owner)
        self.on_relay_change: Callable[[int, bool], None] | None = None
        self.rtp_timeout_ms = rtp_timeout_ms
        if rtcp_interval_ms <= 0:
            raise MediaConfigError(f"rtcp_interval_ms must be positive, got {rtcp_interval_ms}")
        self.rtcp_interval_ms = rtcp_interval_ms
        self._rng = rng if rng is not None else random.Random()
        self._recorder_factory = recorder_factory if recorder_factory is not None else _wav_recorder
        self._capacity = 0
        self._jitter = JitterStore(0)
        self._chans: list[_Channel | None] = []
        self._partial_rows: set[int] = set()  # channels holding part of a re-framed frame
        self._ptime_rows: set[int] = set()  # channels sending packets of other than 20 ms
        self._free: list[int] = []
        self._remotes: list[Address | None] = []
        self.routes = bytearray()
        self._route_counts: npt.NDArray[np.uint32]
        self._route_seen: npt.NDArray[np.uint32]
        self._route_credited: list[int] = []
        self._pcm: npt.NDArray[np.int16]
        self._mixed: npt.NDArray[np.int16]
        self._conceal: npt.NDArray[np.uint8]
        self._seq: npt.NDArray[np.uint16]
        self._seq_items: array.array[int]  # the memory of _seq (see _alloc_arrays)
        self._ts: npt.NDArray[np.uint32]
        self._ssrc: npt.NDArray[np.uint32]
        self._pt: npt.NDArray[np.uint8]
        self._codec: npt.NDArray[np.uint8]
        self._dir: npt.NDArray[np.uint8]
        self._open: npt.NDArray[np.bool_]
        self._dtmf: npt.NDArray[np.bool_]  # detection running now
        self._dtmf_want: npt.NDArray[np.bool_]  # detection asked for
        self._dtmf_unpaired: npt.NDArray[np.bool_]  # ... only while not in a two-party bridge
        self._recording: npt.NDArray[np.bool_]
        self._listen_only: npt.NDArray[np.bool_]
        self._relay: npt.NDArray[np.bool_]
        self._marker: npt.NDArray[np.bool_]
        self._sending: npt.NDArray[np.bool_]
        self._has_remote: npt.NDArray[np.bool_]
        self._timed_out: npt.NDArray[np.bool_]
        self._audio_mask: npt.NDArray[np.bool_]
        self._last_rx: npt.NDArray[np.int64]
        self._last_rx_items: array.array[int]
        self._packets_out: npt.NDArray[np.int64]
        self._rtcp_due: npt.NDArray[np.int64]  # when each channel's next RTCP report is due, ms
        self._alloc_arrays(max(1, capacity))
        self._detector = DtmfDetector(self._capacity)
        self._jitter.grow(self._capacity)
        self._te_active: set[int] = set()
        self._mixer = Mixer()
        self._players: dict[int, _Player] = {}
        self._recorders: dict[int, _Recorder] = {}
        self._next_id = 1
        self._held_topology: set[int] | None = None  # between hold_topology() and release_topology()
        self._holds = 0  # hold_topology() calls not yet released (they nest)
        self._out: list[tuple[int, bytes, Address]] = []
        self._rtcp_out: list[tuple[int, bytes, Address]] = []
        #: CNAME of every source this engine sends (RFC 3550 §6.5.1; random per engine as RFC 7022 suggests).
        self.cname = f"{self._rng.getrandbits(64):016x}@ccpbx"
        #: Added to ``now_ms`` to get NTP wall-clock milliseconds for SR timestamps (the edge sets it; the
        #: round-trip time only needs the clock to be consistent, so 0 works too).
        self.ntp_offset_ms = 0
        #: Called with ``(channel, address)`` after :meth:`set_remote`: the transport unlocks a socket it had
        #: connected to the channel's old address (see :class:`~ccpbx.media.transport.MediaServer`).
        self.on_remote: Callable[[int, Address | None], None] | None = None
        #: Called when a channel opens on an :attr:`idle` engine: a driver that stopped ticking it starts again.
        self.on_wake: Callable[[], None] | None = None
        #: A tick with no channel on the audio path takes the short way (the module docstring). Off, it runs every
        #: stage on nothing; a test compares the two.
        self.relay_only_ticks = True
        self._stale_clock = False  # a channel opened on an idle engine, whose clock may have stood still since
        # One (rows, datagrams, destinations) triple of lists per tick: no per-packet tuple on the hot path.
        self._batches: list[tuple[list[int], list[bytes], list[Address]]] = []
        self._splitters: dict[int, struct.Struct] = {}  # packet count -> Struct that splits a tick's blob
        self._events: list[MediaEvent] = []
        self._now = 0
        self._deadline = 0
        self._masks_dirty = True
        self._audio_rows_arr: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._pcm_rows: npt.NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._audio_dense = True
        self._send_mask = np.zeros(0, dtype=bool)
        self.ticks = 0

    # -- struct of arrays ------------------------------------------------------------------------------------

    def _alloc_arrays(self, capacity: int) -> None:
        """Allocate (or double) the struct of arrays, keeping the rows in use."""
        old = self._capacity
        frame = (capacity, FRAME_SAMPLES)
        row = (capacity,)

        def grow(name: str, shape: tuple[int, ...], dtype: npt.DTypeLike) -> None:
            new = np.zeros(shape, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)[:old]
            setattr(self, name, new)

        def grow_shared(name: str, typecode: str, dtype: npt.DTypeLike) -> None:
            # A row array the packet path writes one element at a time: an array.array holds the memory (its
            # item assignment costs a fraction of numpy's) and the tick sees it as an ndarray without a copy.
            items = array.array(typecode, bytes(np.dtype(dtype).itemsize * capacity))
            new = np.frombuffer(items, dtype=dtype)
            if old:
                new[:old] = getattr(self, name)[:old]
            setattr(self, name, new)
            setattr(self, name + "_items", items)

        # Decoded inbound audio (what each channel says); a row keeps its last frame, which concealment fades.
        grow("_pcm", frame, np.int16)
        grow("_mixed", frame, np.int16)  # what each channel hears
        for name, dtype in (
            ("_conceal", np.uint8),
            ("_ts", np.uint32),
            ("_ssrc", np.uint32),
            ("_pt", np.uint8),
            ("_codec", np.uint8),
            ("_dir", np.uint8),
            ("_open", np.bool_),
            ("_dtmf", np.bool_),
            ("_dtmf_want", np.bool_),
            ("_dtmf_unpaired", np.bool_),
            ("_recording", np.bool_),
            ("_listen_only", np.bool_),
            ("_relay", np.bool_),
            ("_marker", np.bool_),
            ("_sending", np.bool_),  # audio went out last tick (a row that starts again marks a talkspurt)
            ("_has_remote", np.bool_),
            ("_timed_out", np.bool_),
            ("_audio_mask", np.bool_),
            ("_packets_out", np.int64),
            ("_rtcp_due", np.int64),
        ):
            grow(name, row, dtype)
        grow_shared("_seq", "H", np.uint16)
        grow_shared("_last_rx", "q", np.int64)
        routes = bytearray(ROUTE_BYTES * capacity)
        if old:
            routes[: ROUTE_BYTES * old] = self.routes[: ROUTE_BYTES * old]
        #: One :data:`ROUTE` row per channel (a new object when the engine grows: read it per packet).
        self.routes = routes
        self._route_counts = np.frombuffer(routes, dtype=np.dtype("<u4"), count=capacity * ROUTE_BYTES // 4)[
            (ROUTE_TAIL_OFFSET + 2) // 4 :: ROUTE_BYTES // 4]  # each row's packet count, seen by the tick
        grow("_route_seen", row, np.uint32)  # the count each row had at the last tick
        self._route_credited.extend([0] * (capacity - old))  # of each row's count, what the channels were given
        self._chans.extend([None] * (capacity - old))
        self._remotes.extend([None] * (capacity - old))
        for ch in range(old, capacity):  # a heap: the lowest free slot goes first, so ids stay small and dense
            heapq.heappush(self._free, ch)
        self._capacity = capacity
        self._masks_dirty = True

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def channel_count(self) -> int:
        return self._capacity - len(self._free)

    # -- channels -------------------------------------------------------------------------------------------

    def open_channel(
        self,
        codec: Codec,
        remote: Address | None,
        telephone_event_pt: int | None = 101,
        ptime_ms: int = FRAME_MS,
    ) -> int:
        """Open a channel and return its id (a slot number, reused after :meth:`close_channel`).

        Only ``ptime_ms == 20`` is supported (the G.711 default of RFC 3551 §4.5.14).
        """
        if not isinstance(codec, Codec):
            raise MediaConfigError(f"codec must be a Codec, got {codec!r}")
        if ptime_ms != FRAME_MS:
            raise MediaConfigError(f"only ptime {FRAME_MS} ms is supported, got {ptime_ms}")
        if telephone_event_pt is not None and not 96 <= telephone_event_pt <= 127:
            raise MediaConfigError(f"telephone-event payload type must be dynamic (96-127), got {telephone_event_pt}")
        woke = self.idle
        if not self._free:
            self._alloc_arrays(self._capacity * 2)
            self._detector.grow(self._capacity)
            self._jitter.grow(self._capacity)
        ch = heapq.heappop(self._free)
        rng = self._rng
        c = self._chans[ch] = _Channel(codec, remote, telephone_event_pt)
        self._remotes[ch] = remote
        self._seq[ch] = rng.getrandbits(16)
        self._ts[ch] = rng.getrandbits(32)
        self._ssrc[ch] = c.ssrc = rng.getrandbits(32)
        self._pt[ch] = codec.payload_type
        self._codec[ch] = _CODEC_INDEX[codec]
        self._dir[ch] = _DIRECTIONS.index(Direction.SENDRECV)
        self._open[ch] = True
        self._dtmf[ch] = False
        self._dtmf_want[ch] = False
        self._dtmf_unpaired[ch] = False
        self._recording[ch] = False
        self._listen_only[ch] = False
        self._relay[ch] = False
        self._marker[ch] = True
        self._has_remote[ch] = remote is not None
        self._timed_out[ch] = False
        self._last_rx[ch] = self._now
        self._packets_out[ch] = 0
        # RFC 3550 §6.3.1 (simplified): the first report after half an interval, randomised 0.5-1.5x.
        self._rtcp_due[ch] = self._now + self._rtcp_interval() // 2
        self._conceal[ch] = 0
        self._pcm[ch] = 0
        self._forget_route(ch)
        self._detector.reset(ch)
        self._jitter.reset(ch)
        self._masks_dirty = True
        if woke:
            self._stale_clock = True
            if self.on_wake is not None:
                self.on_wake()
        return ch

    @property
    def idle(self) -> bool:
        """No channel is open and no recording is kept: :meth:`tick` has nothing to do, and a driver may stop
        calling it until :attr:`on_wake`."""
        return self.channel_count == 0 and not self._recorders

    def _chan(self, ch: int) -> _Channel:
        c = self._chans[ch] if 0 <= ch < self._capacity else None
        if c is None:
            raise MediaConfigError(f"no open channel {ch}")
        return c

    def close_channel(self, ch: int) -> None:
        """Close ``ch``: it leaves every bridge/conference, its player stops, recorders drop it."""
        c = self._chan(ch)
        self.unroute(ch)  # its counts go to the channels first (the BYE below asks whether it sent)
        self._ptime_rows.discard(ch)
        self._partial_rows.discard(ch)
        peers = [x for gid in c.groups for x in self._mixer.group(gid) if x != ch]
        for gid in list(c.groups):
            self._mixer.remove_member(gid, ch)
            if not self._mixer.group(gid):
                self._mixer.remove_group(gid)
        c.groups.clear()
        self._players.pop(ch, None)
        for rid, rec in list(self._recorders.items()):
            if ch in rec.channels:
                if all(x == ch for x in rec.channels):
                    self.stop_record(rid)
                else:
                    rec.channels = tuple(x if x != ch else -1 for x in rec.channels)
        if self._packets_out[ch] or c.relayed or c.rtcp_sent:
            # RFC 3550 §6.3.7: a participant that never sent an RTP or RTCP packet MUST NOT send a BYE (a call
            # ended before any media or report, as most short or failed calls are: nothing to say, nothing sent)
            self._queue_rtcp(ch, c, self._now, bye=True)
        self._chans[ch] = None
        self._remotes[ch] = None
        self._te_active.discard(ch)
        self._open[ch] = False
        self._relay[ch] = False
        self._has_remote[ch] = False
        heapq.heappush(self._free, ch)
        self._topology_changed(*peers)

    def set_remote(self, ch: int, addr: Address | None) -> None:
        """Send to ``addr`` (from SDP); symmetric RTP may re-latch on the first packet received after this."""
        c = self._chan(ch)
        self.unroute(ch)
        c.remote = addr
        self._remotes[ch] = addr
        c.latched = False
        c.cand = None
        self._has_remote[ch] = addr is not None
        if self.on_remote is not None:
            self.on_remote(ch, addr)

    def set_rtcp_remote(self, ch: int, addr: Address | None) -> None:
        """Send ``ch``'s RTCP to ``addr`` (SDP ``a=rtcp``, RFC 3605) instead of the RTP address's port + 1."""
        self._chan(ch).rtcp_remote = addr

    def set_direction(self, ch: int, direction: Direction) -> None:
        """Set the media direction (hold: SENDONLY with music on hold, or RECVONLY/INACTIVE)."""
        self._chan(ch)
        self._dir[ch] = _DIRECTIONS.index(direction)
        self._last_rx[ch] = self._now
        self._timed_out[ch] = False
        self._topology_changed(ch)

    def restart_rtp_timeout(self, ch: int) -> None:
        """Count ``ch``'s RTP silence from now (a call just answered: phones send nothing while ringing)."""
        self._chan(ch)
        self._last_rx[ch] = self._now
        self._timed_out[ch] = False

    def direction(self, ch: int) -> Direction:
        self._chan(ch)
        return _DIRECTIONS[int(self._dir[ch])]

    def remote(self, ch: int) -> Address | None:
        return self._chan(ch).remote

    def settled(self, ch: int, source: Address) -> bool:
        """Whether ``ch`` is latched to ``source`` with no other address in sight and has taken at least
        :data:`SETTLE_PACKETS` packets: its phone's stream has settled there (the transport then hears only it)."""
        c = self._chans[ch] if 0 <= ch < self._capacity else None
        if c is not None:
            self._fold(ch)
        return (c is not None and c.latched and c.cand is None and c.packets_in >= SETTLE_PACKETS
                and source == c.remote)

    def ssrc(self, ch: int) -> int:
        return self._chan(ch).ssrc

    # -- topology ---------------------------------------------------------------------------------------------

    def _new_id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def bridge(self, a: int, b: int) -> int:
        """Bridge two channels (each hears the other); returns a group id."""
        return self.conference([a, b])

    def conference(self, members: Sequence[int]) -> int:
        """Create a conference of speakers (mix-minus); returns a group id."""
        for ch in members:
            self._chan(ch)
        if len(set(members)) != len(members):
            raise MediaConfigError(f"duplicate members {members}")
        gid = self._new_id()
        self._mixer.set_group(gid, {ch: Role.SPEAKER for ch in members})
        for ch in members:
            self._chans[ch].groups.add(gid)  # type: ignore[union-attr]
        self._topology_changed(*members)
        return gid

    def add_to_conference(self, gid: int, ch: int, role: Role = Role.SPEAKER) -> None:
        """Add ``ch`` to group ``gid`` (or change its role): SPEAKER (also barge), LISTEN_ONLY, WHISPER_TO(t)."""
        c = self._chan(ch)
        if not self._mixer.has_group(gid):
            raise MediaConfigError(f"no bridge/conference {gid}")
        if role.kind is RoleKind.WHISPER and (role.target not in self._mixer.group(gid) or role.target == ch):
            raise MediaConfigError(f"whisper target {role.target} must be another member of {gid}")
        self._mixer.add_member(gid, ch, role)
        c.groups.add(gid)
        self._topology_changed(ch)

    def remove_from_conference(self, gid: int, ch: int) -> None:
        c = self._chan(ch)
        if not self._mixer.has_group(gid):
            raise MediaConfigError(f"no bridge/conference {gid}")
        self._mixer.remove_member(gid, ch)
        c.groups.discard(gid)
        # the leaver and the members left (no copy of the member list taken before the removal)
        self._topology_changed(ch, *self._mixer.group(gid))

    def destroy(self, gid: int) -> None:
        """Dissolve a bridge or conference (the channels stay open)."""
        if not self._mixer.has_group(gid):
            raise MediaConfigError(f"no bridge/conference {gid}")
        members = list(self._mixer.group(gid))
        for ch in members:
            c = self._chans[ch]
            if c is not None:
                c.groups.discard(gid)
        self._mixer.remove_group(gid)
        self._topology_changed(*members)

    unbridge = destroy

    def members(self, gid: int) -> dict[int, Role]:
        if not self._mixer.has_group(gid):
            raise MediaConfigError(f"no bridge/conference {gid}")
        return dict(self._mixer.group(gid))

    def play(self, ch: int, source: AudioSource, *, mix: bool = False) -> int:
        """Attach a player to ``ch``; it replaces (``mix=False``) or adds to what ``ch`` hears.

        A previous player on the channel is replaced silently. :class:`PlaybackFinished` is reported when
        the source returns ``None``.
        """
        self._chan(ch)
        pid = self._new_id()
        self._players[ch] = _Player(pid, source, mix)
        self._topology_changed(ch)
        return pid

    def stop_play(self, ch: int) -> None:
        self._chan(ch)
        if self._players.pop(ch, None) is not None:
            self._topology_changed(ch)

    def record(self, channels: Sequence[int], path: str | os.PathLike[str], stereo: bool = False,
               heard: Sequence[int] = (), monitor: Callable[[npt.NDArray[np.int16]], None] | None = None) -> int:
        """Record what ``channels`` say (their decoded inbound audio) and what ``heard`` hear (the audio sent
        to them: the other parties, prompts and music included).

        The sources are ``channels`` then ``heard``; ``stereo=True`` needs exactly two (left, right), mono sums
        all of them (clipped). A caller's view of its call: ``record([a], path, stereo=True, heard=[a])``.
        ``monitor`` sees every frame written, as it is written (silence detection for voicemail and IVRs).
        """
        for ch in (*channels, *heard):
            self._chan(ch)
        sources = (*channels, *heard)
        if not sources or (stereo and len(sources) != 2):
            raise MediaConfigError(f"stereo recording needs 2 sources, mono at least 1; got {list(sources)}")
        sink: FrameSink = self._recorder_factory(path, 2 if stereo else 1)
        if monitor is not None:
            sink = _MonitoredSink(sink, monitor)
        rid = self._new_id()
        flags = (False,) * len(channels) + (True,) * len(heard)
        self._recorders[rid] = _Recorder(tuple(sources), flags, stereo, sink)
        self._update_recording()
        self._topology_changed(*sources)  # a recorded channel, heard or said, leaves the relay fast path
        return rid

    def stop_record(self, rid: int) -> None:
        rec = self._recorders.pop(rid, None)
        if rec is None:
            raise MediaConfigError(f"no recorder {rid}")
        rec.sink.close()
        self._update_recording()
        self._topology_changed(*(ch for ch in rec.channels if ch >= 0))

    def enable_dtmf_detection(self, ch: int, enabled: bool = True, *, unpaired_only: bool = False) -> None:
        """Turn in-band DTMF detection (ITU-T Q.24) on or off for ``ch``.

        ``unpaired_only``: detect only while ``ch`` is not one of the two speakers of a plain bridge. There the
        tones reach the other party as audio anyway, and the bridge keeps its packet-relay fast path instead of
        decoding and filtering every frame (an in-band phone in a call costs what any other does).
        """
        self._chan(ch)
        self._dtmf_want[ch] = enabled
        self._dtmf_unpaired[ch] = unpaired_only
        self._topology_changed(ch)

    def send_dtmf(self, ch: int, digit: str, duration_ms: int = 100) -> None:
        """Send ``digit`` as RFC 4733 telephone-events; the channel's audio is muted meanwhile."""
        c = self._chan(ch)
        if c.te_pt < 0:
            raise MediaConfigError(f"channel {ch} has no telephone-event payload type")
        tx = TelephoneEventSender()
        tx.start(digit, duration_ms)
        c.te_tx = tx
        c.te_ts = -1
        self._te_active.add(ch)
        self._topology_changed(ch)

    def hold_topology(self) -> None:
        """Put off the relay and detection decisions until :meth:`release_topology`: several settings of a
        channel given together (its codec, remote, direction, detection from one SDP exchange), or the commands
        of one batch, are decided on once, as they would be after the last of them. Nothing else (a tick, a
        packet) may run in between. Holds nest: the decisions are made at the last release."""
        self._holds += 1
        if self._held_topology is None:
            self._held_topology = set()

    def release_topology(self) -> None:
        """Decide on what changed since :meth:`hold_topology` (at the release of the outermost hold)."""
        if self._holds > 1:
            self._holds -= 1
            return
        self._holds = 0
        held, self._held_topology = self._held_topology, None
        if held:
            self._topology_changed(*held)

    def _topology_changed(self, *chs: int) -> None:
        """Recompute relay pairs and flags of ``chs`` and everyone sharing a group with them.

        Work is proportional to the channels touched, never to the engine size, so building or tearing down
        thousands of bridges stays linear.
        """
        self._masks_dirty = True
        if self._held_topology is not None:
            self._held_topology.update(chs)
            return
        chans = self._chans
        todo: set[int] = set()
        for ch in chs:
            c = chans[ch]
            if c is None:
                continue
            todo.add(ch)
            for gid in c.groups:
                todo.update(self._mixer.group(gid))
        for ch in todo:  # in-band detection first: it decides whether a channel may be relayed
            c = chans[ch]
            if c is None:
                continue
            self._unroute_one(ch)  # (every member of its groups is in todo: its peer's route goes too)
            detect = bool(self._dtmf_want[ch]) and not (self._dtmf_unpaired[ch] and self._in_pair(c))
            if detect and not self._dtmf[ch]:
                self._detector.reset(ch)
            self._dtmf[ch] = detect
        for ch in todo:
            c = chans[ch]
            if c is None:
                continue
            self._listen_only[ch] = any(self._mixer.group(g)[ch].kind is RoleKind.LISTEN_ONLY for g in c.groups)
            peer = self._relay_peer_for(ch, c)
            if peer != c.relay_peer:
                if c.relay_peer >= 0 and peer < 0:
                    # Back to the audio path: a fresh jitter buffer and a marker bit (new talkspurt).
                    self._jitter.reset(ch)
                    self._marker[ch] = True
                was = c.relay_peer >= 0
                c.relay_peer = peer
                c.relay_in_ssrc = -1
                self._relay[ch] = peer >= 0
                if was != (peer >= 0) and self.on_relay_change is not None:
                    self.on_relay_change(ch, peer >= 0)
        # A group whose members all relay packets needs no mixing: the plan leaves it out, so its cost (and the
        # plan's recompilation at every call set-up and tear-down) grows with the mixed groups only.
        mixer = self._mixer
        for gid in {g for ch in todo if (c := chans[ch]) is not None for g in c.groups}:
            if mixer.has_group(gid):
                mixer.set_relayed(gid, all(self._relay[x] for x in mixer.group(gid)))

    def _update_recording(self) -> None:
        self._recording[:] = False
        for rec in self._recorders.values():
            for ch in rec.channels:
                if ch >= 0:
                    self._recording[ch] = True

    def _in_pair(self, c: _Channel) -> bool:
        """``c`` is one of the two speakers of a plain bridge (one group of exactly two speakers)."""
        if len(c.groups) != 1:
            return False
        members = self._mixer.group(next(iter(c.groups)))
        return len(members) == 2 and all(role.kind is RoleKind.SPEAKER for role in members.values())

    def _relay_peer_for(self, ch: int, c: _Channel) -> int:
        if not self.relay_enabled or not self._in_pair(c):
            return -1
        other = next(x for x in self._mixer.group(next(iter(c.groups))) if x != ch)
        oc = self._chans[other]
        if oc is None or oc.codec is not c.codec or c.rx_samples not in (0, oc.tx_samples) \
                or oc.rx_samples not in (0, c.tx_samples):
            return -1  # relayed packets keep their size: only when each sends the packet time the other asked
        return other if self._relay_ok(ch, c) and self._relay_ok(other, oc) else -1

    def _relay_ok(self, ch: int, c: _Channel | None) -> bool:
        """A channel can be relayed: one plain group, sendrecv, nothing attached that needs its audio."""
        return (
            c is not None
            and len(c.groups) == 1
            and self._dir[ch] == _SENDRECV
            and ch not in self._players
            and not self._recording[ch]
            and not self._dtmf[ch]
            and c.te_tx is None
        )

    def _rebuild_masks(self) -> None:
        receiving = _DIR_RECEIVES[self._dir] & self._open
        recv_mask = receiving & ~self._relay
        self._audio_mask = recv_mask  # read per packet: the audio path takes it (no per-channel loop here)
        self._audio_rows_arr = np.flatnonzero(recv_mask)
        self._audio_dense = bool(
            self._audio_rows_arr.size == 0 or self._audio_rows_arr[-1] == self._audio_rows_arr.size - 1
        )
        self._silent_rows = np.flatnonzero(~recv_mask)
        self._send_mask = _DIR_SENDS[self._dir] & self._open & ~self._relay
        self._recv_mask = receiving
        self._masks_dirty = False

    # -- per packet -------------------------------------------------------------------------------------------

    def receive(self, ch: int, data: bytes, source: Address, now_ms: int) -> None:
        """Take one datagram received on channel ``ch``'s socket (RFC 3550 §5.1 header, RFC 4733 events).

        Malformed packets, unknown payload types and packets for closed channels only bump counters.
        """
        c = self._chans[ch] if 0 <= ch < self._capacity else None
        if c is None:
            return
        routes = self.routes
        at = ch * ROUTE_BYTES
        if routes[at] or routes[at + 1]:  # a route (its size is not 0): what comes here may change what it was
            self._unroute_one(ch)  # made of (tested here, not in a call, on every packet of the general path)
        n = len(data)
        if n < RTP_HEADER_BYTES:
            c.bad += 1
            return
        b0, b1, seq, ts, ssrc = RTP_HEADER.unpack_from(data)
        if b0 & 0xC0 != 0x80:
            c.bad += 1
            return
        off = RTP_HEADER_BYTES + (b0 & 0x0F) * 4
        end = n
        if b0 & 0x30:
            if b0 & 0x10:  # header extension, RFC 3550 §5.3.1
                if n < off + 4:
                    c.bad += 1
                    return
                off += 4 + 4 * int.from_bytes(data[off + 2 : off + 4], "big")
            if b0 & 0x20:  # padding, RFC 3550 §5.1
                end -= data[-1]
        if off > end or end > n:
            c.bad += 1
            return
        pt = b1 & 0x7F
        table: bytes | None = None
        if pt == c.pt:
            is_audio = True
        elif pt == c.te_pt:
            is_audio = False
        elif pt in c.alt:
            is_audio = True
            table = c.alt[pt]
        else:
            c.bad += 1
            return
        c.packets_in += 1
        self._last_rx[ch] = now_ms
        if source != c.remote or c.cand is not None or not c.latched:
            self._latch(ch, c, source)

        payload = data[off:end]
        if table:
            payload = payload.translate(table)
        if c.relay_peer >= 0 and is_audio and end - off != c.rx_samples:
            c.rx_samples = end - off  # the packet time the phone really sends: relayed only if the peer asked it
            if c.rx_samples != self._chans[c.relay_peer].tx_samples:  # type: ignore[union-attr]
                self._topology_changed(ch)
        if c.relay_peer >= 0:
            self._relay_packet(c, b1, seq, ts, ssrc, payload, is_audio)
            if is_audio:
                return
        if is_audio:
            if self._masks_dirty:
                self._rebuild_masks()
            if self._audio_mask[ch]:
                samples = end - off
                if samples == FRAME_SAMPLES and c.rf_ssrc != ssrc:
                    self._jitter.push(ch, seq, ts, ssrc, payload, now_ms, b1 & 0x80 != 0)
                elif 0 < samples <= MAX_PACKET_SAMPLES:
                    self._reframe(ch, c, seq, ts, ssrc, payload, now_ms, b1 & 0x80 != 0)
                else:
                    c.bad += 1
            return
        try:
            digit = c.te_rx.feed(data[off:end], ts)
        except MediaError:
            c.bad += 1
            return
        if digit is not None:
            last_digit, at = c.last_inband
            c.last_rfc = (digit, now_ms)
            if last_digit != digit or now_ms - at > DTMF_DEDUP_MS:
                self._events.append(DtmfReceived(ch, digit, DtmfSource.RFC4733))

    def forward(self, ch: int, data: bytes, source: Address, now_ms: int) -> tuple[int, bytes, Address] | None:
        """Take one datagram as :meth:`receive` does; when it is a relayed channel's steady audio, return it
        ready to go as ``(peer channel, datagram, destination)`` for the caller to send at once.

        Steady audio is a packet with the plain 12-byte header (no CSRC, extension or padding), the channel's
        payload type, SSRC and packet size as the packets before it, from the latched address: exactly the
        packets :meth:`receive` would relay unchanged but for the header. Its effects here are :meth:`receive`'s
        (counters, RTP timeout, the peer's numbering) without the queue. Anything else goes to :meth:`receive`
        and ``None`` is returned: its output, if any, is queued as usual.
        """
        c = self._chans[ch] if 0 <= ch < self._capacity else None
        if (c is not None and c.relay_peer >= 0 and len(data) - RTP_HEADER_BYTES == c.rx_samples
                and data[0] == RTP_VERSION_BITS and source == c.remote and c.latched and c.cand is None):
            _b0, b1, seq, ts, ssrc = RTP_HEADER.unpack_from(data)
            peer_ch = c.relay_peer
            peer = self._chans[peer_ch]
            if b1 & 0x7F == c.pt and ssrc == c.relay_in_ssrc and peer is not None and peer.remote is not None:
                c.packets_in += 1
                self._last_rx_items[ch] = now_ms
                out = self._relayed(c, peer_ch, peer, (b1 & 0x80) | peer.pt, seq, ts, data[RTP_HEADER_BYTES:])
                routes = self.routes
                at = ch * ROUTE_BYTES
                # The route, as this packet went: its count (if it had one) goes on.
                ROUTE.pack_into(routes, at, len(data), c.pt, peer.pt, c.relay_seq_off, self._seq_items[peer_ch],
                                ROUTE_TAIL.unpack_from(routes, at + ROUTE_TAIL_OFFSET)[1],
                                ssrc, c.relay_ts_off, peer.ssrc, peer_ch)
                return (peer_ch, out, peer.remote)
        self.receive(ch, data, source, now_ms)
        return None

    def _reframe(self, ch: int, c: _Channel, seq: int, ts: int, ssrc: int, payload: bytes, now_ms: int,
                 marker: bool) -> None:
        """Cut a packet of any length (10, 30, 40, 60 ms ...) into the engine's 20 ms frames (RFC 3551 §4.5).

        Frames are aligned on the source's RTP timestamps: frame ``k`` holds the samples from ``anchor + 160k``,
        so a 30 ms packet fills one frame and half of the next, and the next packet completes it. Each frame
        goes to the jitter buffer as soon as it is whole, numbered ``seq0 + k`` and stamped with its own
        timestamp and the arrival time its first sample would have had, so the buffer's ordering and its
        RFC 3550 jitter estimate stay those of the RTP timestamps. A frame whose missing part never came
        (a lost packet) is pushed by the tick when the buffer is about to play it, with that part silent.
        """
        if c.rf_ssrc != ssrc:
            c.rf_ssrc = ssrc
            c.rf_anchor = ts
            c.rf_seq0 = seq
            c.rf_partial = {}
        offset = (ts - c.rf_anchor) & 0xFFFFFFFF
        if offset >= 0x80000000:
            offset -= 0x100000000
        if not -(1 << 20) < offset < (1 << 20):  # a new talk spurt far away in time: realign there
            c.rf_anchor = ts
            c.rf_seq0 = seq
            c.rf_partial = {}
            offset = 0
        n = len(payload)
        i = 0
        first = True
        while i < n:
            pos = offset + i
            k = pos // FRAME_SAMPLES
            start = pos - k * FRAME_SAMPLES
            take = min(FRAME_SAMPLES - start, n - i)
            if take == FRAME_SAMPLES:
                frame: bytes | None = payload[i:i + FRAME_SAMPLES]
            else:
                codes, filled = c.rf_partial.get(k) or (bytearray([c.codec.silence]) * FRAME_SAMPLES, 0)
                codes[start:start + take] = payload[i:i + take]
                filled += take
                if filled >= FRAME_SAMPLES:
                    c.rf_partial.pop(k, None)
                    frame = bytes(codes)
                else:
                    c.rf_partial[k] = (codes, filled)
                    frame = None
            if frame is not None:
                self._push_frame(ch, c, k, ssrc, frame, now_ms + (k * FRAME_SAMPLES - offset) // 8,
                                 marker and first)
            first = False
            i += take
        while len(c.rf_partial) > MAX_PARTIAL_FRAMES:  # a bound; the tick flushes them when due
            k = min(c.rf_partial)
            codes, _ = c.rf_partial.pop(k)
            self._push_frame(ch, c, k, ssrc, bytes(codes), now_ms, False)
        if c.rf_partial:
            self._partial_rows.add(ch)

    def _flush_due_partials(self, now_ms: int) -> None:
        """A frame whose other part never came (a lost packet) plays when due, with that part silent."""
        for ch in list(self._partial_rows):
            c = self._chans[ch]
            due = self._jitter.next_sequence(ch)
            if c is None or not c.rf_partial or due is None:
                self._partial_rows.discard(ch)
                continue
            for k in sorted(c.rf_partial):
                seq = (c.rf_seq0 + k) & 0xFFFF
                if seq_diff(seq, due) > 0:
                    break
                codes, _ = c.rf_partial.pop(k)
                self._push_frame(ch, c, k, c.rf_ssrc, bytes(codes), now_ms, False)
            if not c.rf_partial:
                self._partial_rows.discard(ch)

    def _push_frame(self, ch: int, c: _Channel, k: int, ssrc: int, frame: bytes, arrival_ms: int,
                    marker: bool) -> None:
        ts = (c.rf_anchor + k * FRAME_SAMPLES) & 0xFFFFFFFF
        self._jitter.push(ch, (c.rf_seq0 + k) & 0xFFFF, ts, ssrc, frame, arrival_ms, marker)

    def _latch(self, ch: int, c: _Channel, source: Address) -> None:
        """Symmetric RTP (RFC 4961): send where the packets come from (NAT), with a little hysteresis."""
        src: Address = (source[0], source[1])
        if src == c.remote:
            c.latched = True
            c.cand = None
            return
        if not c.latched:
            c.latched = True
        elif src == c.cand:
            c.cand_count += 1
            if c.cand_count < LATCH_PACKETS:
                return
        else:
            c.cand = src
            c.cand_count = 1
            return
        c.cand = None
        if c.relay_peer >= 0:
            self._unroute_one(c.relay_peer)  # it sent to the old address
        c.remote = src
        self._remotes[ch] = src
        self._has_remote[ch] = True
        self._events.append(SourceChanged(ch, src))

    def _relay_packet(self, c: _Channel, b1: int, seq: int, ts: int, ssrc: int, payload: bytes, audio: bool) -> None:
        peer_ch = c.relay_peer
        peer = self._chans[peer_ch]
        if peer is None or peer.remote is None:
            return
        pt = peer.pt if audio else peer.te_pt
        if pt < 0:
            return
        if ssrc != c.relay_in_ssrc:
            # Continue the peer's own numbering from where it stands (no gap, no foreign SSRC).
            c.relay_in_ssrc = ssrc
            c.relay_seq_off = (int(self._seq[peer_ch]) - seq) & 0xFFFF
            c.relay_ts_off = (int(self._ts[peer_ch]) - ts) & 0xFFFFFFFF
        self._out.append((peer_ch, self._relayed(c, peer_ch, peer, (b1 & 0x80) | pt, seq, ts, payload), peer.remote))

    def _relayed(self, c: _Channel, peer_ch: int, peer: _Channel, b1: int, seq: int, ts: int, payload: bytes) -> bytes:
        """``payload`` as the peer's packet (its SSRC, ``c``'s offsets on the numbering; ``b1``: marker and
        payload type), counted as relayed; the peer's next sequence number follows it."""
        oseq = (seq + c.relay_seq_off) & 0xFFFF
        seqs = self._seq_items
        if ((oseq + 1 - seqs[peer_ch]) & 0xFFFF) < 0x8000:
            seqs[peer_ch] = (oseq + 1) & 0xFFFF
        peer.relayed += 1
        return RTP_HEADER.pack(RTP_VERSION_BITS, b1, oseq, (ts + c.relay_ts_off) & 0xFFFFFFFF, peer.ssrc) + payload

    # -- routes (the transport's relay from a row; see the module docstring) ---------------------------------

    def unroute(self, ch: int) -> None:
        """Forget the route of ``ch`` and of its relay peer (which sends to it), their counts given to the
        channels: the transport calls this when something the engine does not see changes (SRTP)."""
        if not 0 <= ch < self._capacity:
            return
        self._unroute_one(ch)
        c = self._chans[ch]
        if c is not None and c.relay_peer >= 0:
            self._unroute_one(c.relay_peer)

    def _unroute_one(self, ch: int) -> None:
        routes = self.routes
        at = ch * ROUTE_BYTES
        if not routes[at] and not routes[at + 1]:  # no route (its size is 0)
            return
        row = ROUTE.unpack_from(routes, at)
        count, peer_ch = row[5], row[9]
        self._fold_row(ch, count, peer_ch)
        self._seq_items[peer_ch] = row[4]  # the peer's next sequence number, as the route left it
        if count != self._route_seen[ch]:
            self._last_rx_items[ch] = max(self._last_rx_items[ch], self._now)  # packets since the last tick
        self._forget_route(ch)

    def _forget_route(self, ch: int) -> None:
        at = ch * ROUTE_BYTES
        self.routes[at : at + ROUTE_BYTES] = _NO_ROUTE
        self._route_seen[ch] = 0
        self._route_credited[ch] = 0

    def _fold(self, ch: int) -> None:
        """Give the channels what ``ch``'s route counted since the last fold: packets in to ``ch``, relayed to
        its peer."""
        row = ROUTE.unpack_from(self.routes, ch * ROUTE_BYTES)
        self._fold_row(ch, row[5], row[9])

    def _fold_row(self, ch: int, count: int, peer_ch: int) -> None:
        credited = self._route_credited[ch]
        if count == credited:
            return
        delta = (count - credited) & 0xFFFFFFFF
        self._route_credited[ch] = count
        c = self._chans[ch]
        if c is not None:
            c.packets_in += delta
        peer = self._chans[peer_ch]
        if peer is not None:
            peer.relayed += delta

    def _fold_pair(self, ch: int, c: _Channel) -> None:
        """Fold both routes that count for ``ch``: its own (packets in) and its peer's (packets it relayed)."""
        self._fold(ch)
        if c.relay_peer >= 0:
            self._fold(c.relay_peer)

    def _fold_arrivals(self, now_ms: int) -> None:
        """A route that counted packets since the last tick heard its phone: the RTP timeout starts again."""
        counts = self._route_counts
        moved = counts != self._route_seen
        if moved.any():
            self._last_rx[moved] = now_ms
            self._route_seen[moved] = counts[moved]

    # -- RTCP (RFC 3550 §6) -----------------------------------------------------------------------------------

    def _rtcp_interval(self) -> int:
        return max(1, int(self.rtcp_interval_ms * self._rng.uniform(0.5, 1.5)))

    def _ntp(self, now_ms: int) -> int:
        """64-bit NTP timestamp (32.32 fixed point, RFC 3550 §4) of ``now_ms``."""
        wall_ms = now_ms + self.ntp_offset_ms
        return ((wall_ms // 1000) << 32 | ((wall_ms % 1000) << 32) // 1000) & 0xFFFFFFFFFFFFFFFF

    def _rtcp_destination(self, c: _Channel) -> Address | None:
        if c.rtcp_remote is not None:
            return c.rtcp_remote
        if c.rtcp_from is not None:
            return c.rtcp_from
        if c.remote is not None:
            return (c.remote[0], c.remote[1] + 1)  # RFC 3550 §11: the next port up
        return None

    def _report_blocks(self, ch: int, c: _Channel, now_ms: int) -> tuple[ReportBlock, ...]:
        """The reception report about the far end's stream, RFC 3550 §6.4.1 and §A.3."""
        rx = self._jitter.reception(ch)
        if rx is None:
            return ()
        ssrc, highest, expected, received, jitter = rx
        expected_interval = expected - c.rr_expected_prior
        received_interval = received - c.rr_received_prior
        c.rr_expected_prior = expected
        c.rr_received_prior = received
        lost_interval = expected_interval - received_interval
        fraction = (lost_interval << 8) // expected_interval if expected_interval > 0 and lost_interval > 0 else 0
        lost = min(max(expected - received, -0x800000), 0x7FFFFF)
        dlsr = ((now_ms - c.sr_at) * 65536) // 1000 if c.sr_mid else 0
        return (ReportBlock(ssrc, min(fraction, 255), lost, highest, jitter, c.sr_mid, dlsr & 0xFFFFFFFF),)

    def _queue_rtcp(self, ch: int, c: _Channel, now_ms: int, *, bye: bool = False) -> None:
        """Queue one compound packet (RFC 3550 §6.1): SR or RR, SDES CNAME, and BYE when ``bye``."""
        dest = self._rtcp_destination(c)
        if dest is None:
            return
        ssrc = int(self._ssrc[ch])
        blocks = self._report_blocks(ch, c, now_ms)
        self._fold_pair(ch, c)
        sent = int(self._packets_out[ch]) + c.relayed
        first: RtcpPacket
        if sent:
            # RFC 3550 §6.4.1: the RTP timestamp of the same instant as the NTP one (our sampling clock).
            first = SenderReport(ssrc, self._ntp(now_ms), int(self._ts[ch]), sent & 0xFFFFFFFF,
                                 (sent * FRAME_SAMPLES) & 0xFFFFFFFF, blocks)
        else:
            first = ReceiverReport(ssrc, blocks)
        packets: list[RtcpPacket] = [first, SourceDescription.cname(ssrc, self.cname)]
        if bye:
            packets.append(Bye((ssrc,)))
        self._rtcp_out.append((ch, serialize_rtcp(packets), dest))
        c.rtcp_sent += 1

    def receive_rtcp(self, ch: int, data: bytes, source: Address, now_ms: int) -> None:
        """Take one datagram received on channel ``ch``'s RTCP socket (RFC 3550 §6.4 SR/RR, §6.6 BYE).

        Malformed compounds only bump the channel's ``bad`` counter. A report block about our own SSRC
        updates the far end's view of our stream: loss, jitter and the round-trip time (§6.4.1, A = now in
        NTP middle-32 form, RTT = A - LSR - DLSR).
        """
        c = self._chans[ch] if 0 <= ch < self._capacity else None
        if c is None:
            return
        try:
            packets = parse_rtcp(data)
        except MediaError:
            c.bad += 1
            return
        c.rtcp_received += 1
        c.rtcp_from = (source[0], source[1])
        ours = int(self._ssrc[ch])
        for pkt in packets:
            if isinstance(pkt, SenderReport):
                c.sr_mid = (pkt.ntp_timestamp >> 16) & 0xFFFFFFFF
                c.sr_at = now_ms
                blocks = pkt.reports
            elif isinstance(pkt, ReceiverReport):
                blocks = pkt.reports
            else:
                if isinstance(pkt, Bye):
                    c.remote_bye = True
                continue
            for block in blocks:
                if block.ssrc != ours:
                    continue
                c.remote_fraction_lost = block.fraction_lost / 256.0
                c.remote_lost = block.cumulative_lost
                c.remote_jitter = block.jitter * 1000.0 / 8000.0  # G.711 timestamp units -> ms
                if block.last_sr:
                    a = (self._ntp(now_ms) >> 16) & 0xFFFFFFFF
                    rtt = (a - block.last_sr - block.delay_since_last_sr) & 0xFFFFFFFF
                    if rtt < 0x80000000:  # a negative difference means clocks or LSR do not match: ignore
                        c.rtt_ms = rtt * 1000.0 / 65536.0

    # -- per tick ----------------------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> None:
        """Process one 20 ms frame for every channel (see the module docstring for the stages)."""
        if self.ticks == 0 or self._stale_clock:
            # channels opened before the first tick, or while the engine was idle and not ticked, were stamped
            # with a clock that stood still: their silence (the RTP timeout) and their first report start now
            self._last_rx[self._open] = now_ms
            if self._stale_clock:
                self._stale_clock = False
                self._rtcp_due[self._open] = now_ms + self._rtcp_interval() // 2
        self._now = now_ms
        self._deadline = now_ms + FRAME_MS
        self.ticks += 1
        if self.idle:
            return  # nothing to gather, mix or send
        if self._masks_dirty:
            self._rebuild_masks()
        if self.relay_only_ticks and not (self._audio_rows_arr.size or self._players or self._recorders
                                          or self._te_active or self._partial_rows):
            # Every open channel relays its peer's packets (or hears nothing): no frame to gather, mix or send,
            # only the clocks, reports and timeouts. Bridged calls are most calls; this was most of their tick.
            if self._pcm_rows.size:  # the full tick silences every row off the audio path: a channel that comes
                self._pcm[self._pcm_rows] = 0  # back conceals a missing frame from silence, not its old audio
                self._pcm_rows = self._audio_rows_arr
            self._sending.fill(False)
            self._ts += np.uint32(FRAME_SAMPLES)
            self._reports_and_timeouts(now_ms)
            return
        pcm = self._pcm

        # 1. gather one frame per receiving channel
        all_rows = self._pcm_rows = self._audio_rows_arr  # after this tick only these rows of pcm may be non-zero
        if self._partial_rows:
            self._flush_due_partials(now_ms)
        got, data = self._jitter.pop_rows(all_rows)
        complete = got.size == all_rows.size
        # 2. decode per codec group, conceal the rest
        if got.size:
            codes = np.frombuffer(data, dtype=np.uint8).reshape(got.size, FRAME_SAMPLES)
            codec_of = self._codec[got]
            for ci, codec in enumerate(_CODECS):
                sel = codec_of == ci
                if sel.all():
                    if complete and self._audio_dense:
                        codec.decode(codes, out=pcm[: got.size])  # rows 0..k-1: decode in place
                    else:
                        pcm[got] = codec.decode(codes)
                    break
                if sel.any():
                    pcm[got[sel]] = codec.decode(codes[sel])
            self._conceal[got] = 0
        if not complete:
            miss_mask = self._audio_mask.copy()
            miss_mask[got] = False
            miss = np.flatnonzero(miss_mask)
            faded = pcm[miss] >> 1
            gone = self._conceal[miss] >= MAX_CONCEAL_FRAMES
            faded[gone] = 0
            pcm[miss] = faded
            self._conceal[miss] = np.minimum(self._conceal[miss] + 1, MAX_CONCEAL_FRAMES)
        if self._silent_rows.size:
            pcm[self._silent_rows] = 0

        # 3. in-band DTMF
        detect = np.flatnonzero(self._dtmf & self._audio_mask)
        if detect.size:
            for row, digit in self._detector.process(detect, pcm[detect]):
                c = self._chans[row]
                if c is None:
                    continue
                c.last_inband = (digit, now_ms)
                last_digit, at = c.last_rfc
                if last_digit != digit or now_ms - at > DTMF_DEDUP_MS:
                    self._events.append(DtmfReceived(row, digit, DtmfSource.INBAND))

        # 4. players and mix
        out = self._mixed
        out.fill(0)
        p_rows: npt.NDArray[np.intp] | None = None
        p_frames: npt.NDArray[np.int16] | None = None
        p_mix: npt.NDArray[np.bool_] | None = None
        if self._players:
            rows_l: list[int] = []
            frames_l: list[npt.NDArray[np.int16]] = []
            mix_l: list[bool] = []
            finished: list[int] = []
            for ch, player in self._players.items():
                frame = player.source.read_frame()
                if frame is None:
                    finished.append(ch)
                    continue
                rows_l.append(ch)
                frames_l.append(frame)
                mix_l.append(player.mix)
            for ch in finished:
                pid = self._players.pop(ch).pid
                self._events.append(PlaybackFinished(ch, pid))
            if finished:
                self._topology_changed(*finished)
            if rows_l:
                p_rows = np.array(rows_l, dtype=np.intp)
                p_frames = np.stack(frames_l).astype(np.int16, copy=False)
                p_mix = np.array(mix_l, dtype=bool)
        mix(self._mixer.plan, pcm, out, p_rows, p_frames, p_mix)

        # 5. recorders: what the recorded channels said (pcm) and what they hear (their mix, out)
        for rec in self._recorders.values():
            if rec.stereo:
                frame2 = np.zeros((FRAME_SAMPLES, 2), dtype=np.int16)
                for i, (r, heard) in enumerate(zip(rec.channels, rec.heard, strict=True)):
                    if r >= 0:
                        frame2[:, i] = out[r] if heard else pcm[r]
                rec.sink.write(frame2)
            else:
                total = np.zeros(FRAME_SAMPLES, np.int32)
                for r, heard in zip(rec.channels, rec.heard, strict=True):
                    if r >= 0:
                        total += out[r] if heard else pcm[r]
                rec.sink.write(np.clip(total, -32768, 32767).astype(np.int16))

        # 6. DTMF senders take over their channel's packets
        send_mask = self._send_mask & self._has_remote
        if self._te_active:
            self._send_dtmf_packets(send_mask)
        # 7. audio goes only where something really plays: a player, or a party heard through the mix that sent
        # RTP lately. A leg whose peer sends nothing gets nothing (as Asterisk does), not 50 packets/s of our
        # silence — that was most of the server's CPU with silent phones on hold or waiting.
        send_mask &= self._fed(p_rows, p_mix)
        resumed = send_mask & ~self._sending
        if resumed.any():
            self._marker[resumed] = True  # RFC 3551 §4.1: the first packet of a talkspurt carries the marker
        np.copyto(self._sending, send_mask)
        self._emit_audio(np.flatnonzero(send_mask))

        # RTP timestamps follow the sampling clock whether or not a packet was sent (RFC 3550 §5.1).
        self._ts += np.uint32(FRAME_SAMPLES)
        self._reports_and_timeouts(now_ms)

    def _reports_and_timeouts(self, now_ms: int) -> None:
        """The tick's last stages, relayed channels' too: RTCP reports due, RTP timeouts."""
        self._fold_arrivals(now_ms)
        # 8. RTCP reports of the channels whose interval ran out (a handful per tick)
        due = np.flatnonzero(self._open & (self._rtcp_due <= now_ms))
        if due.size:
            chans = self._chans
            for ch in due.tolist():
                c = chans[ch]
                if c is not None:
                    self._queue_rtcp(ch, c, now_ms)
                self._rtcp_due[ch] = now_ms + self._rtcp_interval()

        # 9. RTP timeout
        stale = self._recv_mask & ((now_ms - self._last_rx) > self.rtp_timeout_ms)
        fresh = stale & ~self._timed_out
        if fresh.any():
            self._events.extend(RtpTimeout(int(r)) for r in np.flatnonzero(fresh))
        self._timed_out = stale

    def _fed(self, p_rows: npt.NDArray[np.intp] | None, p_mix: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.bool_]:
        """Rows that hear something this tick: a player, or a mix source that received RTP within the last
        ``MAX_CONCEAL_FRAMES`` ticks (its concealment still plays). The mix plan run on one 0/1 sample per row."""
        cap = self._capacity
        live = np.zeros((cap, 1), dtype=np.int16)
        live[self._audio_mask & (self._conceal < MAX_CONCEAL_FRAMES), 0] = 1
        fed = np.zeros((cap, 1), dtype=np.int16)
        frames = None if p_rows is None else np.ones((p_rows.size, 1), dtype=np.int16)
        mix(self._mixer.plan, live, fed, p_rows, frames, p_mix)
        return fed[:, 0] > 0

    def _send_dtmf_packets(self, send_mask: npt.NDArray[np.bool_]) -> None:
        """RFC 4733 §2.5: one packet per tick, the event's start timestamp throughout, marker on the first."""
        done: list[int] = []
        for ch in sorted(self._te_active):
            c = self._chans[ch]
            if c is None or c.te_tx is None:
                self._te_active.discard(ch)
                continue
            nxt = c.te_tx.next_packet()
            if nxt is None:
                c.te_tx = None
                self._te_active.discard(ch)
                self._marker[ch] = True
                done.append(ch)
                continue
            payload, marker, _is_end = nxt
            if c.te_ts < 0:
                c.te_ts = int(self._ts[ch])
            if send_mask[ch] and c.remote is not None:
                seq = int(self._seq[ch])
                ts = (c.te_ts + c.te_tx.timestamp_offset) & 0xFFFFFFFF
                header = RTP_HEADER.pack(0x80, (0x80 if marker else 0) | c.te_pt, seq, ts, int(self._ssrc[ch]))
                self._out.append((ch, header + payload, c.remote))
                self._seq[ch] = (seq + 1) & 0xFFFF
                self._packets_out[ch] += 1
            send_mask[ch] = False  # audio is muted while the digit plays
        if done:
            self._topology_changed(*done)

    def _emit_audio(self, rows: npt.NDArray[np.intp]) -> None:
        """Encode, packetise (RFC 3550 §5.1) and queue one packet per row of ``rows`` (ascending)."""
        k = rows.size
        if k == 0:
            return
        # All channels sending is the common case: rows 0..k-1, so slices (views) replace fancy-index copies.
        sel: slice | npt.NDArray[np.intp] = slice(0, k) if rows[-1] == k - 1 else rows
        pkt = np.empty(k, dtype=PACKET_DTYPE)  # header fields and payload of every packet, back to back
        body = pkt["payload"]
        mixed = self._mixed[sel]
        codec_of = self._codec[sel]
        for ci, codec in enumerate(_CODECS):
            is_ci = codec_of == ci
            if is_ci.all():
                codec.encode(mixed, out=body)
                break
            if is_ci.any():
                body[is_ci] = codec.encode(mixed[is_ci])
        pkt["b0"] = RTP_VERSION_BITS
        pkt["b1"] = self._pt[sel] | (self._marker[sel].view(np.uint8) << 7)
        pkt["seq"] = self._seq[sel]
        pkt["ts"] = self._ts[sel]
        pkt["ssrc"] = self._ssrc[sel]
        # One C call cuts the blob into k bytes objects (a Python slice per packet costs several times more).
        splitter = self._splitters.get(k)
        if splitter is None:
            splitter = self._splitters[k] = struct.Struct(f"{PACKET_BYTES}s" * k)
        datagrams = list(splitter.unpack(pkt.tobytes()))
        if isinstance(sel, slice):
            rows_l = list(range(k))
            dests = self._remotes[:k]
        else:
            rows_l = rows.tolist()
            remotes = self._remotes
            dests = [remotes[r] for r in rows_l]
        held: list[int] = []
        if self._ptime_rows:
            rows_l, datagrams, dests, held = self._repacketise(rows_l, datagrams, dests)
        self._batches.append((rows_l, datagrams, dests))  # type: ignore[arg-type]
        self._seq[sel] += np.uint16(1)
        self._marker[sel] = False
        self._packets_out[sel] += 1
        if held:  # no packet went out for these this tick: their numbering and count stay
            self._seq[held] -= np.uint16(1)
            self._packets_out[held] -= 1

    def _repacketise(self, rows: list[int], datagrams: list[bytes], dests: list[Address | None]
                     ) -> tuple[list[int], list[bytes], list[Address | None], list[int]]:
        """Re-cut the 20 ms packets of the channels whose peer asked another packet time (its ``a=ptime``).

        Their frames collect in the channel; a packet of ``tx_samples`` goes out (sequence number next in line,
        the timestamp of its first sample) whenever that much is waiting. Returns the batch without those
        rows and the rows that sent nothing this tick.
        """
        keep_rows: list[int] = []
        keep_data: list[bytes] = []
        keep_dests: list[Address | None] = []
        held: list[int] = []
        chans = self._chans
        for ch, data, dest in zip(rows, datagrams, dests, strict=True):
            if ch not in self._ptime_rows:
                keep_rows.append(ch)
                keep_data.append(data)
                keep_dests.append(dest)
                continue
            c = chans[ch]
            assert c is not None
            if not c.tx_buf:
                c.tx_ts = int(self._ts[ch])
                c.tx_marker = bool(data[1] & 0x80)
            c.tx_buf += data[RTP_HEADER_BYTES:]
            seq = int(self._seq[ch])
            sent = 0
            if dest is None:
                c.tx_buf.clear()
            while len(c.tx_buf) >= c.tx_samples and dest is not None:
                header = RTP_HEADER.pack(0x80, (0x80 if c.tx_marker else 0) | c.pt, (seq + sent) & 0xFFFF,
                                         c.tx_ts & 0xFFFFFFFF, int(self._ssrc[ch]))
                self._out.append((ch, header + bytes(c.tx_buf[:c.tx_samples]), dest))
                del c.tx_buf[:c.tx_samples]
                c.tx_ts += c.tx_samples
                c.tx_marker = False
                sent += 1
            if sent == 0:
                held.append(ch)
            elif sent > 1:  # 10 ms packets: two per tick
                self._seq[ch] = (seq + sent - 1) & 0xFFFF
        return keep_rows, keep_data, keep_dests, held

    def set_send_ptime(self, ch: int, ptime_ms: int | None) -> None:
        """Send ``ch``'s audio in packets of ``ptime_ms`` (the peer's ``a=ptime``, RFC 8866 §6.4; 10 to 60 ms in
        steps of 10); None or anything else means the engine's 20 ms."""
        c = self._chan(ch)
        samples = FRAME_SAMPLES
        if ptime_ms is not None and ptime_ms % 10 == 0 and 10 <= ptime_ms <= MAX_PACKET_SAMPLES // 8:
            samples = ptime_ms * 8
        if samples == c.tx_samples:
            return
        c.tx_samples = samples
        c.tx_buf = bytearray()
        if samples == FRAME_SAMPLES:
            self._ptime_rows.discard(ch)
        else:
            self._ptime_rows.add(ch)
        self._topology_changed(ch)

    # -- outputs ---------------------------------------------------------------------------------------------

    def outgoing(self) -> list[tuple[bytes, Address]]:
        """Drain the packets to send as ``(datagram, destination)``."""
        return [(data, addr) for _ch, data, addr in self.outgoing_by_channel()]

    def outgoing_by_channel(self) -> Iterable[tuple[int, bytes, Address]]:
        """Drain the packets to send as ``(channel, datagram, destination)``: the edge sends each from the
        channel's own socket (symmetric RTP needs the source port the peer sends to). Iterate it once."""
        out, batches = self._out, self._batches
        self._out = []
        self._batches = []
        if not batches:
            return out
        return itertools.chain(out, *(zip(r, p, a, strict=True) for r, p, a in batches))

    def outgoing_rtcp(self) -> list[tuple[int, bytes, Address]]:
        """Drain the RTCP compound packets to send as ``(channel, datagram, destination)``, each from the
        channel's RTCP socket (RTP port + 1, RFC 3550 §11)."""
        out = self._rtcp_out
        self._rtcp_out = []
        return out

    @property
    def has_outgoing(self) -> bool:
        return bool(self._out) or bool(self._batches)

    def events(self) -> list[MediaEvent]:
        """Drain the events."""
        ev = self._events
        self._events = []
        return ev

    def next_deadline(self) -> int:
        """When :meth:`tick` is due next, in the caller's monotonic milliseconds (last tick + 20 ms)."""
        return self._deadline

    def stats(self, ch: int) -> ChannelStats:
        c = self._chan(ch)
        self._fold_pair(ch, c)
        js = self._jitter.stats(ch)
        return ChannelStats(
            packets_in=c.packets_in,
            packets_out=int(self._packets_out[ch]) + c.relayed,
            bad=c.bad,
            lost=js.lost,
            late=js.late,
            duplicates=js.duplicates,
            jitter_ms=js.jitter_ms,
            depth_ms=js.depth_ms,
            relayed=c.relayed,
            rtt_ms=c.rtt_ms,
            remote_fraction_lost=c.remote_fraction_lost,
            remote_jitter=c.remote_jitter,
            remote_lost=c.remote_lost,
            rtcp_sent=c.rtcp_sent,
            rtcp_received=c.rtcp_received,
            remote_bye=c.remote_bye,
        )

    def close(self) -> None:
        """Stop every recorder (closing its file) and close every channel."""
        for rid in list(self._recorders):
            self.stop_record(rid)
        for ch, c in enumerate(self._chans):
            if c is not None:
                self.close_channel(ch)

    def set_codec(self, ch: int, codec: Codec, telephone_event_pt: int | None = 101,
                  also: Iterable[tuple[int, Codec]] = ()) -> None:
        """Change what ``ch`` sends and expects: SDP offer/answer (RFC 3264) settles the codec only after the
        channel's port was offered, and a re-INVITE may change it mid-call.

        ``also`` are further (payload type, codec) pairs the peer may send (every format both sides listed,
        RFC 3264 §5.1; a dynamic payload type for ``codec`` too): each packet is decoded by its payload type.
        """
        if not isinstance(codec, Codec):
            raise MediaConfigError(f"codec must be a Codec, got {codec!r}")
        if telephone_event_pt is not None and not 96 <= telephone_event_pt <= 127:
            raise MediaConfigError(f"telephone-event payload type must be dynamic (96-127), got {telephone_event_pt}")
        alt: dict[int, bytes] = {}
        for pt, other in also:
            if not isinstance(other, Codec) or not 0 <= pt <= 127:
                raise MediaConfigError(f"bad extra payload type {pt!r} for {other!r}")
            if pt != codec.payload_type and pt != telephone_event_pt:
                alt[pt] = b"" if other is codec else _TRANSCODE[(other, codec)]
        c = self._chan(ch)
        c.codec = codec
        c.pt = codec.payload_type
        c.te_pt = -1 if telephone_event_pt is None else telephone_event_pt
        c.alt = alt
        self._pt[ch] = codec.payload_type
        self._codec[ch] = _CODEC_INDEX[codec]
        self._topology_changed(ch)

    def relaying(self, ch: int) -> bool:
        """Whether ``ch`` is on the packet-relay fast path."""
        return self._chan(ch).relay_peer >= 0
