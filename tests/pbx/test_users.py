"""Extension names (RFC 3261 user part), passwords, HA1, and the first-run demo extensions."""

from __future__ import annotations

import hashlib
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccpbx.pbx.store import META_DEMO_EXTENSIONS, DuplicateExtension, Store
from ccpbx.pbx.users import (
    DEMO_EXTENSIONS,
    EXTENSION_MAX_CHARS,
    USER_CHARS,
    InvalidExtensionError,
    UserError,
    WeakPasswordError,
    create_extension,
    digest_ha1,
    ensure_demo_extensions,
    generate_password,
    validate_extension,
    validate_password,
)

RFC3261_USER_SPECIALS = "-_.!~*'()&=+$,;?/"


@pytest.mark.parametrize(
    "ext", ["1001", "alice", "Bob.Smith", "sales-team_2", "a", "x" * EXTENSION_MAX_CHARS, RFC3261_USER_SPECIALS,
            "+15551234567", "*97", "queue;1", "o'brien"],
)
def test_valid_extensions(ext: str) -> None:
    assert validate_extension(ext) == ext


@pytest.mark.parametrize(
    ("ext", "fragment"),
    [
        ("", "empty"),
        ("a b", "a space"),
        ("alice@pbx", "'@'"),
        ("sip:alice", "':'"),
        ("al%40ice", "'%'"),
        ("tab\there", "a tab"),
        ("new\nline", "control character"),
        ("zoë", "non-ASCII"),
        ('say"hi"', "'\"'"),
        ("a<b>", "'<'"),
        ("x" * (EXTENSION_MAX_CHARS + 1), "limit is 64"),
    ],
)
def test_invalid_extensions_say_why(ext: str, fragment: str) -> None:
    with pytest.raises(InvalidExtensionError) as info:
        validate_extension(ext)
    assert fragment in str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_the_allowed_set_is_rfc_3261_user_without_escapes() -> None:
    assert set(string.ascii_letters + string.digits + RFC3261_USER_SPECIALS) == USER_CHARS


@settings(max_examples=100)
@given(st.text(alphabet=sorted(USER_CHARS), min_size=1, max_size=EXTENSION_MAX_CHARS))
def test_any_user_part_within_the_limit_is_accepted(ext: str) -> None:
    assert validate_extension(ext) == ext


@settings(max_examples=100)
@given(st.text(min_size=1, max_size=20), st.characters().filter(lambda c: c not in USER_CHARS), st.data())
def test_any_other_character_is_refused(prefix: str, bad: str, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(prefix)))
    with pytest.raises(InvalidExtensionError):
        validate_extension(prefix[:at] + bad + prefix[at:])


def test_password_rules() -> None:
    assert validate_password("12345678") == "12345678"
    with pytest.raises(WeakPasswordError, match="at least 8"):
        validate_password("1234567")
    with pytest.raises(WeakPasswordError):
        validate_password("")
    with pytest.raises(WeakPasswordError, match="control"):
        validate_password("abcdefgh\n")


def test_generated_passwords_are_long_random_and_plain() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) == 16
        assert set(password) <= set(string.ascii_letters + string.digits)
        assert validate_password(password) == password
    assert len(generate_password(24)) == 24
    with pytest.raises(ValueError):
        generate_password(4)


def test_digest_ha1_against_rfc_7616_example() -> None:
    # RFC 7616 §3.9.1: the published responses are reproducible from our HA1 values.
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    for algorithm, name, response in (
        ("MD5", "md5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "sha256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ):
        ha1 = digest_ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life")
        ha2 = hashlib.new(name, b"GET:/dir/index.html").hexdigest()
        got = hashlib.new(name, f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}".encode()).hexdigest()
        assert got == response
    assert digest_ha1("sha-256", "u", "r", "p") == digest_ha1("SHA-256", "u", "r", "p")


def test_digest_ha1_encodes_utf8() -> None:
    assert digest_ha1("MD5", "alice", "réalm", "pässword") == hashlib.md5("alice:réalm:pässword".encode()).hexdigest()


async def test_demo_extensions_are_created_once(tmp_path: Path) -> None:
    path = tmp_path / "ccpbx.sqlite3"
    async with await Store.open(path) as store:
        credentials = await ensure_demo_extensions(store, "ccpbx")
        assert [ext for ext, _ in credentials] == ["1001", "1002", "1003", "alice"]
        for ext, password in credentials:
            validate_password(password)
            stored = await store.get_extension(ext)
            assert stored is not None
            assert stored.name == dict(DEMO_EXTENSIONS)[ext]
            assert stored.ha1_sha256 == digest_ha1("SHA-256", ext, "ccpbx", password)
            assert stored.ha1_md5 == digest_ha1("MD5", ext, "ccpbx", password)
        assert len({password for _, password in credentials}) == 4
        assert await store.get_meta(META_DEMO_EXTENSIONS) is not None
        assert await ensure_demo_extensions(store, "ccpbx") == []
    async with await Store.open(path) as store:
        assert await ensure_demo_extensions(store, "ccpbx") == []
        # Even after the administrator deletes them all, they do not come back.
        for ext, _ in DEMO_EXTENSIONS:
            await store.remove_extension(ext)
        assert await ensure_demo_extensions(store, "ccpbx") == []
        assert await store.count_extensions() == 0


async def test_no_demo_extensions_when_users_already_exist(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "ccpbx.sqlite3") as store:
        await store.add_extension("200", "password", "Mine", "ccpbx")
        assert await ensure_demo_extensions(store, "ccpbx") == []
        assert [e.ext for e in await store.list_extensions()] == ["200"]


async def test_create_extension_validates_before_storing(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "ccpbx.sqlite3") as store:
        with pytest.raises(InvalidExtensionError):
            await create_extension(store, "bad name", "password1", realm="ccpbx")
        with pytest.raises(WeakPasswordError):
            await create_extension(store, "bob", "short", realm="ccpbx")
        assert await store.count_extensions() == 0
        created = await create_extension(store, "bob", "password1", name="Bob", realm="ccpbx")
        assert created.name == "Bob"
        with pytest.raises(DuplicateExtension):
            await create_extension(store, "bob", "password1", realm="ccpbx")
