"""HTTP Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760): MD5 and SHA-256, qop=auth.

Nonces are stateless and tamper-proof: ``<issued-ms>.<random>.<hmac>``, checked with a per-process secret,
so a restarted server answers an old nonce with ``stale=true`` and the phone retries without asking its user.
Replays are refused by remembering the highest nonce-count seen per nonce until the nonce expires.

Several processes may share the secret (the server and its SIP workers); a nonce then names its issuer
(``<issued-ms>.<issuer>-<random>.<hmac>``, the server's own have none). Only the issuer remembers the counts of
its nonces, so only it may accept them for the methods it verifies itself (``owned_methods``: a SIP worker's
REGISTER refreshes); anyone else answers such credentials ``stale`` when right, so a replay never meets a
process that has not seen the nonce used, unless the issuer passed the request on having checked and kept its
count (:meth:`DigestAuthenticator.use_nonce`, then :meth:`DigestAuthenticator.vouch` where it is verified).
Pure: the caller passes ``now`` (monotonic milliseconds) and the user's stored HA1 values.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from ccpbx.pbx.sip.errors import SipParseError
from ccpbx.pbx.sip.headers import AuthParams, format_auth
from ccpbx.pbx.sip.message import Request, random_hex
from ccpbx.pbx.sip.uri import SipUri, parse_uri

# The nonce-count memory (replay protection, RFC 7616 §3.4): one entry per nonce used with valid credentials,
# kept until the nonce expires (``nonce_ttl_ms``) and at most this many; past it the oldest-issued go first
# (a nonce forgotten early can be replayed at most until it expires: phones re-challenge then anyway).
MAX_NONCE_COUNTS = 100_000  # entries
NONCE_EVICT_FRACTION = 8  # past the cap, the oldest 1/8 go in one pass (amortised O(1) per entry)

# A request's credentials are read twice (whose they are, then whether they are right): one parse serves both.
_auth_params_of = functools.lru_cache(maxsize=256)(AuthParams.parse)

# RFC 8760 §2 algorithm names, in the order a server offers them (strongest first, RFC 7616 §3.7).
ALGORITHMS = {"SHA-256": hashlib.sha256, "MD5": hashlib.md5}


_NONCE_SLOT = "\x00nonce\x00"  # where a challenge's nonce goes in its formatted text


def nonce_issuer(nonce: str) -> str:
    """Who issued ``nonce`` ("" for a server's own; the MAC is not checked here)."""
    parts = nonce.split(".")
    if len(parts) != 3:
        return ""
    issuer, dash, _ = parts[1].rpartition("-")
    return issuer if dash else ""


def digest_hash(algorithm: str, text: str) -> str:
    # surrogateescape: a user name or realm that arrived as non-UTF-8 bytes is hashed as those bytes (RFC 7616 §3.4.4)
    return ALGORITHMS[algorithm](text.encode("utf-8", "surrogateescape")).hexdigest()


def ha1(algorithm: str, username: str, realm: str, password: str) -> str:
    """H(username:realm:password), RFC 7616 §3.4.2."""
    return digest_hash(algorithm, f"{username}:{realm}:{password}")


def digest_response(algorithm: str, ha1_value: str, method: str, uri: str, nonce: str,
                    nc: str | None = None, cnonce: str | None = None, qop: str | None = None) -> str:
    """The ``response`` value, RFC 7616 §3.4.1 (qop=auth) or RFC 2069 compatibility (no qop)."""
    ha2 = digest_hash(algorithm, f"{method}:{uri}")
    if qop:
        return digest_hash(algorithm, f"{ha1_value}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")
    return digest_hash(algorithm, f"{ha1_value}:{nonce}:{ha2}")


def choose_challenge(values: list[str]) -> AuthParams | None:
    """The Digest challenge a UAC answers among ``values`` (one per algorithm): the strongest we support
    (RFC 8760 §2.4), or None when none is a Digest challenge with a known algorithm and a nonce."""
    best: tuple[int, AuthParams] | None = None
    order = list(ALGORITHMS)
    for value in values:
        try:
            params = AuthParams.parse(value)
        except SipParseError:
            continue
        algorithm = (params.get("algorithm") or "MD5").upper()
        if params.scheme.lower() != "digest" or algorithm not in ALGORITHMS or not params.get("nonce"):
            continue
        rank = order.index(algorithm)
        if best is None or rank < best[0]:
            best = (rank, params)
    return best[1] if best is not None else None


def client_authorization(challenge: AuthParams, *, method: str, uri: str, username: str, password: str,
                         cnonce: str, nc: int = 1) -> str:
    """The ``Authorization``/``Proxy-Authorization`` value answering ``challenge`` (RFC 7616 §3.4): qop=auth
    when offered, else the RFC 2069 form; MD5 or SHA-256 as the challenge names."""
    algorithm = (challenge.get("algorithm") or "MD5").upper()
    realm = challenge.get("realm") or ""
    nonce = challenge.get("nonce") or ""
    offered = [q.strip() for q in (challenge.get("qop") or "").split(",") if q.strip()]
    qop = "auth" if "auth" in offered else None
    nc_text = f"{nc:08x}"
    secret = ha1(algorithm, username, realm, password)
    response = digest_response(algorithm, secret, method, uri, nonce, nc_text if qop else None,
                               cnonce if qop else None, qop)
    params = [("username", username), ("realm", realm), ("nonce", nonce), ("uri", uri), ("response", response),
              ("algorithm", algorithm)]
    if qop:
        params += [("qop", qop), ("nc", nc_text), ("cnonce", cnonce)]
    opaque = challenge.get("opaque")
    if opaque is not None:
        params.append(("opaque", opaque))
    return format_auth("Digest", params, _QUOTED_CREDENTIALS)


# RFC 7616 §3.4: these are quoted-strings in credentials; algorithm, qop and nc are tokens.
_QUOTED_CREDENTIALS = frozenset({"username", "realm", "nonce", "uri", "response", "cnonce", "opaque"})


class AuthOutcome(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # no credentials for our realm: challenge
    STALE = "stale"  # right password, old nonce: challenge with stale=true
    WRONG = "wrong"  # a fresh nonce and a wrong response: refuse
    UNKNOWN_USER = "unknown-user"
    MALFORMED = "malformed"  # credentials that break RFC 7616: 400


@dataclass(frozen=True, slots=True)
class AuthResult:
    outcome: AuthOutcome
    username: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Credentials:
    """Parsed ``Authorization`` values the verifier needs."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str
    qop: str | None
    nc: str | None
    cnonce: str | None
    opaque: str | None


class DigestAuthenticator:
    """Issues challenges and verifies credentials for one realm.

    ``nonce_ttl_ms`` bounds how long a nonce is accepted; after it, a correct response earns
    ``stale=true``. ``header`` is ``Authorization`` for a registrar/UAS (401) and ``Proxy-Authorization``
    for a proxy (407).
    """

    def __init__(self, realm: str, *, algorithms: tuple[str, ...] = ("SHA-256", "MD5"),
                 nonce_ttl_ms: int = 300_000, qop: str = "auth", secret: bytes | None = None,
                 opaque: str | None = None, issuer: str = "",
                 owned_methods: frozenset[str] = frozenset()) -> None:
        """``issuer`` names the nonces this one makes (letters and digits; "" for a server's own);
        ``owned_methods``: requests of these methods are accepted only with this issuer's nonces."""
        unknown = [a for a in algorithms if a not in ALGORITHMS]
        if unknown or not algorithms:
            raise ValueError(f"unsupported digest algorithms {unknown or algorithms}")
        self.realm = realm
        self.algorithms = algorithms
        self.nonce_ttl_ms = nonce_ttl_ms
        self.qop = qop
        if not (issuer == "" or issuer.isalnum()):
            raise ValueError(f"a nonce issuer is letters and digits, not {issuer!r}")
        self.issuer = issuer
        self.owned_methods = owned_methods
        self._secret = secret or secrets.token_bytes(32)
        self._opaque = opaque or secrets.token_hex(8)
        self._nonce_counts: dict[str, tuple[int, int]] = {}  # nonce -> (highest nc, issued ms)
        self._vouched: dict[str, int] = {}  # another issuer's nonce -> when its issuer vouched for it (ms)
        # the header values last read and their credentials: admission reads them twice (who, then verify)
        self._last_read: tuple[list[str], Credentials | None] | None = None
        self.max_nonce_counts = MAX_NONCE_COUNTS
        self.evicted = 0  # nonce counts forgotten before their nonce expired (the cap)

    @property
    def secret(self) -> bytes:
        """The key of the nonces' MACs: a SIP worker issuing challenges for this server has it too."""
        return self._secret

    @property
    def opaque(self) -> str:
        return self._opaque

    # ---- challenges ---------------------------------------------------------------------------------------
    def make_nonce(self, now: int) -> str:
        # from the read-ahead pool of os.urandom the SIP identifiers use: no getrandom() system call a challenge
        random_part = f"{self.issuer}-{random_hex(6)}" if self.issuer else random_hex(6)
        stamp = f"{now:x}.{random_part}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        return f"{stamp}.{mac}"

    def challenges(self, now: int, *, stale: bool = False) -> list[str]:
        """``WWW-Authenticate`` values, one per algorithm, strongest first (RFC 8760 §2.4)."""
        before, after = self._challenge_parts[stale]
        nonce = self.make_nonce(now)  # hex digits, dots and a dash: nothing to quote
        return [f"{b}{nonce}{a}" for b, a in zip(before, after, strict=True)]

    @functools.cached_property
    def _challenge_parts(self) -> dict[bool, tuple[list[str], list[str]]]:
        """Each challenge's text before and after its nonce (fresh and stale), formatted once."""
        parts: dict[bool, tuple[list[str], list[str]]] = {}
        for stale in (False, True):
            before, after = [], []
            for algorithm in self.algorithms:
                params = [("realm", self.realm), ("nonce", _NONCE_SLOT), ("opaque", self._opaque),
                          ("algorithm", algorithm)]
                if self.qop:
                    params.append(("qop", self.qop))
                if stale:
                    params.append(("stale", "true"))
                head, slot, tail = format_auth("Digest", params).partition(_NONCE_SLOT)
                assert slot, "the nonce is in the challenge"
                before.append(head)
                after.append(tail)
            parts[stale] = (before, after)
        return parts

    # ---- verification -------------------------------------------------------------------------------------
    def credentials(self, request: Request, header: str = "authorization") -> Credentials | None:
        """Our realm's Digest credentials in ``request``, or None. Malformed ones raise SipParseError."""
        values = request.headers.get_all(header)
        last = self._last_read
        if last is not None and last[0] == values:
            return last[1]
        creds = self._read_credentials(values)
        self._last_read = (values, creds)
        return creds

    def _read_credentials(self, values: list[str]) -> Credentials | None:
        for value in values:
            auth = _auth_params_of(value)
            if auth.scheme.lower() != "digest":
                continue
            p = auth.as_dict()
            if p.get("realm") != self.realm:
                continue
            missing = [k for k in ("username", "nonce", "uri", "response") if not p.get(k)]
            if missing:
                raise SipParseError(f"digest credentials lack {', '.join(missing)}")
            qop = p.get("qop")
            if qop and (not p.get("nc") or not p.get("cnonce")):
                raise SipParseError("digest credentials with qop need nc and cnonce")
            return Credentials(p["username"], p["realm"], p["nonce"], p["uri"], p["response"].lower(),
                               p.get("algorithm", "MD5").upper(), qop, p.get("nc"), p.get("cnonce"),
                               p.get("opaque"))
        return None

    def verify(self, request: Request, ha1_by_algorithm: Mapping[str, str] | None, now: int,
               header: str = "authorization", *, credentials: Credentials | None = None) -> AuthResult:
        """Check the request's credentials against the user's stored HA1 values (None: unknown user);
        ``credentials``: those :meth:`credentials` already read from it."""
        creds = credentials
        if creds is None:
            try:
                creds = self.credentials(request, header)
            except SipParseError as exc:
                return AuthResult(AuthOutcome.MALFORMED, reason=str(exc))
        if creds is None:
            return AuthResult(AuthOutcome.MISSING)
        return self.verify_credentials(creds, request.method, self._uri_matches(creds.uri, request),
                                       ha1_by_algorithm, now)

    def verify_credentials(self, creds: Credentials, method: str, uri_matches: bool,
                           ha1_by_algorithm: Mapping[str, str] | None, now: int) -> AuthResult:
        """:meth:`verify` of credentials already read from a ``method`` request (``uri_matches``: their digest
        URI names its Request-URI, RFC 7616 §3.4.6)."""
        if ha1_by_algorithm is None:
            return AuthResult(AuthOutcome.UNKNOWN_USER, creds.username)
        if creds.algorithm not in self.algorithms:
            return AuthResult(AuthOutcome.MISSING, creds.username, f"algorithm {creds.algorithm} not offered")
        if creds.qop is not None and creds.qop != "auth":
            return AuthResult(AuthOutcome.MALFORMED, creds.username, f"qop {creds.qop} not offered")
        if not uri_matches:
            return AuthResult(AuthOutcome.MALFORMED, creds.username, "digest uri does not match Request-URI")
        ha1_value = ha1_by_algorithm.get(creds.algorithm)
        if not ha1_value:
            return AuthResult(AuthOutcome.MISSING, creds.username, f"no {creds.algorithm} secret stored")
        expected = digest_response(creds.algorithm, ha1_value, method, creds.uri, creds.nonce,
                                   creds.nc, creds.cnonce, creds.qop)
        issued = self._nonce_issued(creds.nonce)
        if not hmac.compare_digest(expected, creds.response):
            # A nonce we never issued (e.g. before a restart) cannot prove anything: challenge afresh.
            if issued is None or now - issued > self.nonce_ttl_ms:
                return AuthResult(AuthOutcome.STALE, creds.username, "unknown or expired nonce")
            return AuthResult(AuthOutcome.WRONG, creds.username, "wrong password")
        if issued is None or now - issued > self.nonce_ttl_ms or now < issued:
            return AuthResult(AuthOutcome.STALE, creds.username, "nonce expired")
        if (method in self.owned_methods and nonce_issuer(creds.nonce) != self.issuer
                and creds.nonce not in self._vouched):
            return AuthResult(AuthOutcome.STALE, creds.username, "nonce issued elsewhere")  # its counts are there
        if not self._check_nonce_count(creds, issued, now):
            return AuthResult(AuthOutcome.STALE, creds.username, "nonce count replayed")
        return AuthResult(AuthOutcome.OK, creds.username)

    def use_nonce(self, creds: Credentials, now: int) -> bool:
        """Whether ``creds`` carry one of this issuer's nonces, unexpired, with a nonce-count not used before
        (kept as used): what a SIP worker checks before passing credentials on to the server to verify."""
        if nonce_issuer(creds.nonce) != self.issuer:  # the server's or another's: no MAC to compute
            return False
        issued = self._nonce_issued(creds.nonce)
        if issued is None or now - issued > self.nonce_ttl_ms or now < issued:
            return False
        return self._check_nonce_count(creds, issued, now)

    def vouch(self, nonce: str, now: int) -> None:
        """``nonce``'s issuer checked and kept its count (:meth:`use_nonce`) for a request passed here: it is
        accepted for ``owned_methods`` too (this process counts its uses from now on)."""
        vouched = self._vouched
        vouched.pop(nonce, None)
        if len(vouched) >= self.max_nonce_counts:
            del vouched[next(iter(vouched))]  # the oldest
        vouched[nonce] = now

    def _nonce_issued(self, nonce: str) -> int | None:
        parts = nonce.split(".")
        if len(parts) != 3:
            return None
        stamp = f"{parts[0]}.{parts[1]}"
        mac = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:24]
        if not hmac.compare_digest(mac, parts[2]):
            return None
        try:
            return int(parts[0], 16)
        except ValueError:
            return None

    def _check_nonce_count(self, creds: Credentials, issued: int, now: int) -> bool:
        """RFC 7616 §3.4: each use of a nonce with qop carries a higher nc; without qop, one use only."""
        if len(self._nonce_counts) >= self.max_nonce_counts:
            self.purge(now)
            if len(self._nonce_counts) >= self.max_nonce_counts:
                self._evict_oldest()
        if creds.qop is None:
            nc = 1
        else:
            try:
                nc = int(creds.nc or "", 16)
            except ValueError:
                return False
        seen = self._nonce_counts.get(creds.nonce)
        if seen is not None and nc <= seen[0]:
            return False
        self._nonce_counts[creds.nonce] = (nc, issued)
        return True

    def purge(self, now: int) -> None:
        """Forget nonce counts of nonces that have expired anyway."""
        limit = now - self.nonce_ttl_ms
        self._nonce_counts = {n: v for n, v in self._nonce_counts.items() if v[1] >= limit}
        if self._vouched:
            self._vouched = {n: at for n, at in self._vouched.items() if at >= limit}

    def _evict_oldest(self) -> None:
        keep = self.max_nonce_counts - max(1, self.max_nonce_counts // NONCE_EVICT_FRACTION)
        ranked = sorted(self._nonce_counts.items(), key=lambda item: item[1][1])
        self.evicted += len(ranked) - keep
        self._nonce_counts = dict(ranked[len(ranked) - keep:])

    @property
    def nonce_count_entries(self) -> int:
        return len(self._nonce_counts)

    @staticmethod
    def _uri_matches(digest_uri: str, request: Request) -> bool:
        """RFC 7616 §3.4.6: the digest ``uri`` names the Request-URI.

        Compared on scheme, user, host and port only: widely deployed phones add or drop URI parameters
        (pyVoIP signs ``sip:host;transport=UDP`` for a Request-URI of ``sip:host``). A URI naming the server
        itself (no user, same host and port) is accepted too: SIPp signs ``sip:host:port`` for every request.
        """
        if digest_uri == str(request.uri):
            return True
        try:
            signed = parse_uri(digest_uri)
        except SipParseError:
            return False
        target = request.uri
        if isinstance(signed, SipUri) and isinstance(target, SipUri):
            same_server = (signed.scheme, signed.host.lower(), signed.port) == (
                target.scheme, target.host.lower(), target.port)
            return same_server and (signed.user == target.user or signed.user is None)
        return signed == target
