"""Dependency directions (ARCHITECTURE.md): every import of ours is checked against an allow-list.

Packages: media, acd and ivr import nothing of ours; pbx may import them; cli imports pbx (and what pbx
re-exports); web imports pbx and acd. Inside pbx, modules are ranked in layers and may import only their
own layer or those below it, so a cycle or an upward import fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pbx", "media", "acd", "ivr", "cli", "web")

ALLOWED: dict[str, set[str]] = {
    "media": set(),
    "acd": set(),
    "ivr": set(),
    "pbx": {"media", "acd", "ivr"},
    "cli": {"pbx", "media", "acd", "ivr"},
    "web": {"pbx", "acd", "media", "ivr"},
}

# Layers inside ccpbx.pbx, lowest first. A module's layer is the longest matching prefix.
PBX_LAYERS: dict[str, int] = {
    "config": 0,
    "log": 0,
    "store": 0,
    "users": 1,
    "sip.errors": 0,
    "sip.grammar": 0,
    "sip.uri": 0,
    "sip.headers": 0,
    "sip.message": 0,
    "sip.framing": 0,
    "sip.transaction": 1,
    "sip.endpoint": 2,
    "sip.dialog": 2,
    "sip.auth": 3,
    "sip.transport": 3,  # edge: framing and the endpoint API, nothing above
    "registrar": 3,
    "location": 0,
    "sdp": 3,
    "cdr": 1,  # call records over the store
    "dialplan": 3,  # pure routing decisions (rules, groups, feature codes); calls consumes them
    "calls": 4,
    "destinations": 5,  # the kind -> handler registry routing, transfers and applications share
    "routing": 5,  # executes dial-plan decisions on calls (hunts, forwarding, features)
    "devicestate": 5,  # idle/ringing/in use/on hold/unavailable from legs and registrations
    "subscriptions": 5,  # the SUBSCRIBE/NOTIFY notifier (RFC 6665) and its event-package interface
    "dialoginfo": 6,  # the `dialog` event package (RFC 4235) over device state and the notifier
    "wiring": 6,  # which destination kinds exist (serve and config check)
    "app": 7,
}
PBX_PACKAGE_INITS = {"", "sip"}  # package __init__ files carry only docstrings


def _module_name(path: Path) -> tuple[str, str]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return parts[0], ".".join(parts[1:])


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg, mod = _module_name(path)
    is_init = path.name == "__init__.py"
    here = ["ccpbx", pkg, *(mod.split(".") if mod else [])]
    if not is_init:
        here = here[:-1]  # the package containing this module
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    found.extend(f"{target}.{a.name}" for a in node.names)
                else:
                    found.append(target)
            elif node.module:
                found.append(node.module)
    return found


def _pbx_layer(mod: str) -> int | None:
    best: tuple[int, int] | None = None
    for prefix, layer in PBX_LAYERS.items():
        if mod == prefix or mod.startswith(prefix + "."):
            if best is None or len(prefix) > best[0]:
                best = (len(prefix), layer)
    return None if best is None else best[1]


def _sources() -> list[Path]:
    files: list[Path] = []
    for pkg in PACKAGES:
        if (ROOT / pkg).is_dir():
            files.extend(sorted((ROOT / pkg).rglob("*.py")))
    return files


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_allowed_directions(path: Path) -> None:
    pkg, mod = _module_name(path)
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] in PACKAGES:
            pytest.fail(f"{path}: imports bare {name!r}; use ccpbx.{name}")
        if parts[0] != "ccpbx" or len(parts) < 2:
            continue
        target_pkg = parts[1]
        if target_pkg == pkg:
            if pkg == "pbx" and mod not in PBX_PACKAGE_INITS:
                src_layer = _pbx_layer(mod)
                dst = ".".join(parts[2:])
                dst_layer = _pbx_layer(dst) if dst else 0
                assert src_layer is not None, f"{path}: ccpbx.pbx.{mod} has no layer in PBX_LAYERS"
                assert dst_layer is not None, f"{path}: imports ccpbx.pbx.{dst}, which has no layer"
                assert dst_layer <= src_layer, (
                    f"{path}: ccpbx.pbx.{mod} (layer {src_layer}) imports ccpbx.pbx.{dst} (layer {dst_layer})"
                )
            continue
        assert target_pkg in ALLOWED[pkg], f"{path}: ccpbx.{pkg} may not import ccpbx.{target_pkg}"


def test_every_pbx_module_has_a_layer() -> None:
    for path in (ROOT / "pbx").rglob("*.py"):
        _, mod = _module_name(path)
        if mod in PBX_PACKAGE_INITS:
            continue
        assert _pbx_layer(mod) is not None, f"ccpbx.pbx.{mod} needs a layer in tests/test_layers.py"


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    # The checker itself must be able to fail: a sip.message that imports the registrar is upward.
    assert _pbx_layer("sip.message") == 0
    assert _pbx_layer("registrar") == 3
    assert _pbx_layer("sip.message") < _pbx_layer("registrar")  # type: ignore[operator]
    assert "pbx" not in ALLOWED["media"]
