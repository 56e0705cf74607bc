"""Users of the PBX: extension names, passwords, and the demo extensions of a first run.

An extension is the user part of a SIP URI (``sip:alice@pbx``), so it is not limited to digits: any RFC 3261
§25.1 ``user`` made only of characters that need no escaping is accepted::

    user             =  1*( unreserved / escaped / user-unreserved )
    unreserved       =  alphanum / mark
    mark             =  "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
    user-unreserved  =  "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"

Escapes (``%40``) are refused: a phone, a dial plan and an administrator would each spell such a name
differently.
"""

from __future__ import annotations

import secrets
import string

from ccpbx.pbx.config import DigestAlgorithm
from ccpbx.pbx.store import (
    META_DEMO_EXTENSIONS,
    META_REALM,
    Extension,
    Store,
    digest_ha1,
)

__all__ = [
    "DEMO_EXTENSIONS",
    "EXTENSION_MAX_CHARS",
    "PASSWORD_MIN_CHARS",
    "USER_CHARS",
    "DigestAlgorithm",
    "InvalidExtensionError",
    "UserError",
    "WeakPasswordError",
    "create_extension",
    "digest_ha1",
    "ensure_demo_extensions",
    "generate_password",
    "validate_extension",
    "validate_password",
]

EXTENSION_MAX_CHARS = 64
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_CHARS = 256
GENERATED_PASSWORD_CHARS = 16
# Letters and digits only: URL-safe, and never starts with "-" (which a shell command would take for an option).
_PASSWORD_ALPHABET = string.ascii_letters + string.digits

_MARK = "-_.!~*'()"
_USER_UNRESERVED = "&=+$,;?/"
USER_CHARS = frozenset(string.ascii_letters + string.digits + _MARK + _USER_UNRESERVED)

# (extension, display name) created on the first run so a fresh install can place a call at once.
DEMO_EXTENSIONS: tuple[tuple[str, str], ...] = (
    ("1001", "Demo 1001"),
    ("1002", "Demo 1002"),
    ("1003", "Demo 1003"),
    ("alice", "Demo Alice"),
)


class UserError(ValueError):
    """A user-supplied extension name or password is not acceptable."""


class InvalidExtensionError(UserError):
    pass


class WeakPasswordError(UserError):
    pass


def _describe_char(c: str) -> str:
    names = {" ": "a space", "\t": "a tab", "@": "'@'", ":": "':'", "%": "'%'"}
    if c in names:
        return names[c]
    if ord(c) < 0x20 or ord(c) == 0x7F:
        return f"a control character (U+{ord(c):04X})"
    if ord(c) > 0x7F:
        return f"the non-ASCII character {c!r}"
    return repr(c)


def validate_extension(ext: str) -> str:
    """Return ``ext`` if it is a valid extension (RFC 3261 §25.1 ``user`` without escapes), else raise.

    Raises :class:`InvalidExtensionError` with a message saying what is wrong (empty, too long, or the first
    character that is not allowed).
    """
    if not ext:
        raise InvalidExtensionError("extension name is empty")
    if len(ext) > EXTENSION_MAX_CHARS:
        raise InvalidExtensionError(
            f"extension name is {len(ext)} characters long; the limit is {EXTENSION_MAX_CHARS}"
        )
    for c in ext:
        if c not in USER_CHARS:
            raise InvalidExtensionError(
                f"extension name {ext!r} contains {_describe_char(c)}; use letters, digits and "
                f"{_MARK}{_USER_UNRESERVED} (the characters a SIP user part takes without escaping)"
            )
    return ext


def validate_password(password: str) -> str:
    """Return ``password`` if it is long enough (and not absurdly long), else raise :class:`WeakPasswordError`."""
    if len(password) < PASSWORD_MIN_CHARS:
        raise WeakPasswordError(f"password must be at least {PASSWORD_MIN_CHARS} characters long")
    if len(password) > PASSWORD_MAX_CHARS:
        raise WeakPasswordError(f"password must be at most {PASSWORD_MAX_CHARS} characters long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in password):
        raise WeakPasswordError("password must not contain control characters")
    return password


def generate_password(length: int = GENERATED_PASSWORD_CHARS) -> str:
    """A random password of ``length`` letters and digits from :mod:`secrets` (16 chars ≈ 95 bits)."""
    if length < PASSWORD_MIN_CHARS:
        raise ValueError(f"length must be at least {PASSWORD_MIN_CHARS}")
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(length))


async def create_extension(store: Store, ext: str, password: str, *, name: str = "", realm: str) -> Extension:
    """Validate and add one extension (raises :class:`UserError` or a ``StoreError``)."""
    return await store.add_extension(validate_extension(ext), validate_password(password), name, realm)


async def ensure_demo_extensions(store: Store, realm: str) -> list[tuple[str, str]]:
    """On the very first run, create the demo extensions and return their ``(ext, password)`` pairs.

    "First run" means no extension exists and the demo flag in ``meta`` is unset; the extensions and the flag
    are written in one transaction, so the passwords are returned (for the server to print) exactly once.
    Later runs, or a database where extensions were added by hand, get ``[]``.
    """
    if await store.get_meta(META_DEMO_EXTENSIONS) is not None or await store.count_extensions() > 0:
        return []
    credentials = [(ext, generate_password()) for ext, _ in DEMO_EXTENSIONS]
    names = dict(DEMO_EXTENSIONS)
    await store.add_extensions(
        [(ext, password, names[ext]) for ext, password in credentials],
        realm,
        meta={META_DEMO_EXTENSIONS: "1", META_REALM: realm},
    )
    return credentials
