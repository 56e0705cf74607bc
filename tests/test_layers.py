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
    # the SIP core: ranked strictly below everything else in pbx (test_the_sip_core_is_below_the_rest)
    "sip.errors": 0,
    "sip.grammar": 0,
    "sip.uri": 0,
    "sip.headers": 0,
    "sip.message": 0,
    "sip.framing": 0,
    "sip.steering": 0,  # requests to SIP workers in the kernel (reuse-port group, classic BPF): sockets only
    "sip.transaction": 1,
    "sip.endpoint": 2,
    "sip.dialog": 2,
    "sip.auth": 3,
    "sip.quick_read": 3,  # a SIP worker's strict, quick reading of common REGISTERs and INVITEs
    "sip.registration_client": 3,  # outbound REGISTER (RFC 3261 §10.2), pure: auth, dialog, message, uri
    "sip.options_ping": 3,  # OPTIONS keep-alive probing (RFC 3261 §11), pure
    "sip.transport": 3,  # edge: framing and the endpoint API, nothing above
    "sip.resolve": 3,  # edge: RFC 3263 server location over DNS (dnspython); imports sip.errors only
    # the rest of pbx
    "config": 4,
    "queue_api": 4,  # the protocol the admin API and CLI use to reach the running ACD
    "log": 4,
    "bounded": 4,  # the expiring, capped cache every table a peer can grow is kept in
    "store": 4,
    "location": 4,
    "numbers": 4,  # pure E.164/national number normalisation per trunk; config imports NumberFormat from it
    "schedules": 4,  # pure time conditions (weekly hours, holidays, zones); config types [[schedule]] with them
    "tlscert": 4,  # a self-signed certificate for a first TLS run (cryptography); cli uses it
    "sdes": 6,  # RFC 4568 a=crypto lines and keys; sdp consumes them
    "users": 5,
    "gcpace": 5,  # the cyclic collector's thresholds and its young collections paced by time
    "loopwatch": 5,  # the event loop's lateness and the collector's pauses (/metrics, loop.stalled)
    "cdr": 5,  # call records over the store
    "registrar": 7,
    "sdp": 7,
    "dialplan": 7,  # pure routing decisions (rules, groups, feature codes); calls consumes them
    "bans": 7,  # failure counts, bans and rate limits per source address (pure): the edge drops what they refuse
    "admission": 7,  # who is asking, and may it: the decision REGISTER, INVITE and SUBSCRIBE share
    "sip_handlers": 8,  # the handler chain's protocol and the admission step
    "call_types": 8,  # parties, dial targets, call events, the SIP port: the values of call control
    "session_timer": 8,  # RFC 4028 on legs, through the manager's public leg operations
    "transfer": 8,  # REFER, blind and attended transfers (RFC 3515, RFC 3891), likewise
    "calls": 8,
    "registration": 9,  # REGISTER in the chain
    "sip_worker": 9,  # a SIP worker process: REGISTER and INVITE challenges of known phones (sip_handlers' To tag)
    "sip_workers": 10,  # the server's side of its SIP workers: start, feed, restart, stop
    "register_leases": 10,  # which bindings the SIP workers may refresh; their refreshes applied (pure)
    "subscribe_handling": 10,  # SUBSCRIBE and our NOTIFYs in the chain, the notifier's timer
    "messaging": 9,  # MESSAGE relayed between extensions (RFC 3428) in the chain
    "call_handling": 9,  # INVITE and call dialogs in the chain
    "pickup": 9,  # call pickup: feature codes and INVITE with Replaces (RFC 3891)
    "destinations": 9,  # the kind -> handler registry routing, transfers and applications share
    "routing": 9,  # executes dial-plan decisions on calls (hunts, forwarding, features)
    "devicestate": 9,  # idle/ringing/in use/on hold/unavailable from legs and registrations
    "subscriptions": 9,  # the SUBSCRIBE/NOTIFY notifier (RFC 6665) and its event-package interface
    "dialoginfo": 10,  # the `dialog` event package (RFC 4235) over device state and the notifier
    "conference": 9,  # the conference: destination (rooms mixed in the engine)
    "flows": 9,  # the ivr: destination: flows in async Python on real calls (ivr.flow implemented)
    "voicemail": 9,  # the voicemail: destination, *97, the boxes (SQLite and WAVs), e-mail
    "mwi": 10,  # message-summary (RFC 3842) over the notifier, unsolicited NOTIFYs
    "queues": 9,  # the queue: destination: the ACD engine on real calls, agents, callbacks
    "trunks": 9,  # providers and gateways: inbound identification, routes out with failover, REGISTER/OPTIONS
    "outbound_policy": 7,  # pure toll-fraud classes and per-extension limits
    "admin": 9,  # the local admin API (aiohttp) over a LiveView it is given; pure device states
    "liveview": 9,  # the default LiveView over the server's parts (calls, location, media); starts the admin API
    "control": 10,  # the call API applications hold (over calls and routing)
    "wiring": 10,  # which destination kinds exist (serve and config check)
    "app": 11,
}
PBX_PACKAGE_INITS = {"", "sip"}  # package __init__ files carry only docstrings


def _module_name(path: Path) -> tuple[str, str]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return parts[0], ".".join(parts[1:])


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(tree: ast.AST, runtime_only: bool) -> list[ast.AST]:
    """Every node, leaving out ``if TYPE_CHECKING:`` bodies when ``runtime_only`` (annotations, no import)."""
    nodes: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if runtime_only and _is_type_checking(node):
            todo.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


def _imports(path: Path, runtime_only: bool = False) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    pkg, mod = _module_name(path)
    is_init = path.name == "__init__.py"
    here = ["ccpbx", pkg, *(mod.split(".") if mod else [])]
    if not is_init:
        here = here[:-1]  # the package containing this module
    found: list[str] = []
    for node in _walk(tree, runtime_only):
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


def violations(pkg: str, mod: str, imports: list[str]) -> list[str]:
    """What is wrong with module ``ccpbx.<pkg>.<mod>`` importing ``imports`` (empty when nothing)."""
    found: list[str] = []
    for name in imports:
        parts = name.split(".")
        if parts[0] in PACKAGES:
            found.append(f"imports bare {name!r}; use ccpbx.{name}")
            continue
        if parts[0] != "ccpbx" or len(parts) < 2:
            continue
        target_pkg = parts[1]
        if target_pkg != pkg:
            if target_pkg not in ALLOWED[pkg]:
                found.append(f"ccpbx.{pkg} may not import ccpbx.{target_pkg}")
            continue
        if pkg != "pbx" or mod in PBX_PACKAGE_INITS:
            continue
        src_layer = _pbx_layer(mod)
        dst = ".".join(parts[2:])
        dst_layer = _pbx_layer(dst) if dst else 0
        if src_layer is None:
            found.append(f"ccpbx.pbx.{mod} has no layer in PBX_LAYERS")
        elif dst_layer is None:
            found.append(f"imports ccpbx.pbx.{dst}, which has no layer")
        elif dst_layer > src_layer:
            found.append(f"ccpbx.pbx.{mod} (layer {src_layer}) imports ccpbx.pbx.{dst} (layer {dst_layer})")
    return found


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_allowed_directions(path: Path) -> None:
    pkg, mod = _module_name(path)
    problems = violations(pkg, mod, _imports(path))
    assert not problems, f"{path}: " + "; ".join(problems)


def test_every_pbx_module_has_a_layer() -> None:
    for path in (ROOT / "pbx").rglob("*.py"):
        _, mod = _module_name(path)
        if mod in PBX_PACKAGE_INITS:
            continue
        assert _pbx_layer(mod) is not None, f"ccpbx.pbx.{mod} needs a layer in tests/test_layers.py"


def test_the_sip_core_is_below_the_rest() -> None:
    sip = [layer for mod, layer in PBX_LAYERS.items() if mod.startswith("sip.")]
    rest = [layer for mod, layer in PBX_LAYERS.items() if not mod.startswith("sip.")]
    assert max(sip) < min(rest)


def _graph() -> dict[str, set[str]]:
    """ccpbx module -> the ccpbx modules it imports when it runs (a package import counts as its ``__init__``;
    imports under ``if TYPE_CHECKING:`` serve annotations only and make no cycle)."""
    names = {}
    for path in _sources():
        pkg, mod = _module_name(path)
        names[path] = ".".join(["ccpbx", pkg, *([mod] if mod else [])])
    known = set(names.values())
    graph: dict[str, set[str]] = {}
    for path, name in names.items():
        targets = set()
        for imported in _imports(path, runtime_only=True):
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, as the list of modules around it, or None (iterative DFS, 3 colours)."""
    colour = dict.fromkeys(graph, 0)
    for start in graph:
        if colour[start]:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph.get(start, ())))]
        path = [start]
        colour[start] = 1
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = 2
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop()
            state = colour.get(nxt, 2)
            if state == 1:
                return [*path[path.index(nxt):], nxt]
            if state == 0:
                colour[nxt] = 1
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def test_no_import_cycles() -> None:
    cycle = find_cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_checker_catches_bad_imports() -> None:
    # The checker must be able to fail: upward, across a wall, bare, unlayered — and a cycle.
    assert violations("pbx", "sip.message", ["ccpbx.pbx.registrar"])
    assert violations("pbx", "sip.dialog", ["ccpbx.pbx.calls"])
    assert violations("media", "g711", ["ccpbx.pbx.calls"])
    assert violations("acd", "engine", ["ccpbx.ivr.errors"])
    assert violations("pbx", "routing", ["pbx.calls"])
    assert violations("pbx", "nowhere", ["ccpbx.pbx.calls"])
    assert not violations("pbx", "routing", ["ccpbx.pbx.calls", "ccpbx.media.engine", "asyncio"])
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    guarded = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import ccpbx.pbx.calls\n")
    assert not any(isinstance(n, ast.Import) for n in _walk(guarded, runtime_only=True))
    assert any(isinstance(n, ast.Import) for n in _walk(guarded, runtime_only=False))


def test_the_architecture_guide_names_every_pbx_module() -> None:
    """docs/ARCHITECTURE.md describes the code as it is: a module added without a line there fails here."""
    guide = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [name for name in PBX_LAYERS
               if (ROOT / "pbx" / (name.replace(".", "/") + ".py")).exists()
               and f"`pbx/{name.replace('.', '/')}.py`" not in guide]
    assert not missing, f"add these to docs/ARCHITECTURE.md's module table: {missing}"
