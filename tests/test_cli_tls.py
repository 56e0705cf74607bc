"""``ccpbx tls selfsigned``: a certificate and key a TLS listener loads, with the [sip] lines that use them."""

from __future__ import annotations

import re
import ssl
import stat
from pathlib import Path

from click.testing import CliRunner

from ccpbx.cli.main import main
from ccpbx.pbx.config import parse_config


def test_selfsigned_writes_a_usable_pair_and_the_config_lines(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["--data-dir", str(tmp_path / "data"), "tls", "selfsigned", "--host", "127.0.0.1",
                                  "--host", "pbx.test"])
    assert result.exit_code == 0, result.output
    cert, key = tmp_path / "data" / "tls" / "ccpbx.crt", tmp_path / "data" / "tls" / "ccpbx.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)  # the pair matches
    assert re.search(r"SHA-256 fingerprint ([0-9A-F]{2}:){31}[0-9A-F]{2}", result.output)
    lines = "\n".join(line.strip() for line in result.output.splitlines() if "=" in line)
    config = parse_config("[sip]\n" + lines + "\n")
    assert config.sip.tls_certificate == cert.resolve() and config.sip.tls_private_key == key.resolve()
    again = runner.invoke(main, ["--data-dir", str(tmp_path / "data"), "tls", "selfsigned", "--host", "x.test"])
    assert again.exit_code == 1 and "exists; pass --force" in again.output
    forced = runner.invoke(main, ["--data-dir", str(tmp_path / "data"), "tls", "selfsigned", "--out",
                                  str(tmp_path / "elsewhere"), "--host", "x.test"])
    assert forced.exit_code == 0 and (tmp_path / "elsewhere" / "ccpbx.crt").is_file()
