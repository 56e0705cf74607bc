"""Caches of the extensions follow changes made beside the running server (the CLI writes the database from
another process): SQLite's data_version tells, so a password changed with ``ccpbx ext passwd`` works at once
(within a second) although credentials are cached for minutes."""

from __future__ import annotations

from pathlib import Path

from ccpbx.pbx.store import ExtensionFeatures, Store
from tests.pbx.simnet import HOST, SimPhone, registered, sim_pbx, until

USERS = {"1001": "pw-1001-old", "1002": "pw-1002"}
DIALPLAN = '[dialplan]\nrule = [{ match = "_1XXX", destination = "extension:{number}" }]\n'


async def test_a_password_changed_by_another_process_takes_effect_while_cached(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, DIALPLAN, USERS) as server:
        phone = await registered(server, "1001", "pw-1001-old")  # its credentials are now cached
        assert await server.extension("1001") is not None
        other = await Store.open(tmp_path / "ccpbx.sqlite3")  # as `ccpbx ext passwd` would
        try:
            version = await server.store.data_version()
            await other.set_password("1001", "pw-1001-new", server.config.sip.realm)
            assert await server.store.data_version() != version
            fresh = SimPhone(server.net, (HOST, server.listening[0].port), "1001", "pw-1001-new")  # type: ignore[attr-defined]

            # the server polls data_version once a second and then forgets what it cached
            await until(lambda: "1001" not in server._credentials, timeout=5.0)
            assert (await fresh.register()).status == 200
            phone.password = "pw-1001-old"
            assert (await phone.register()).status in (401, 403)  # the old one no longer does
            await fresh.close()
        finally:
            await other.close()
            await phone.close()


async def test_own_writes_do_not_look_like_outside_changes(tmp_path: Path) -> None:
    async with sim_pbx(tmp_path, DIALPLAN, USERS) as server:
        version = await server.store.data_version()
        await server.store.set_features(ExtensionFeatures("1002", dnd=True))
        assert await server.store.data_version() == version
