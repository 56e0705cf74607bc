"""Small builders for ACD tests: an engine with agents logged in, and filters over its output."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from ccpbx.acd.engine import AcdEngine
from ccpbx.acd.events import Action, AgentLoggedIn, LogKind, QueueLog
from ccpbx.acd.model import AgentProfile, EngineConfig, Membership, QueueConfig

T = TypeVar("T")


def agent(agent_id: str, queues: Iterable[str] = ("q",), skills: dict[str, int] | None = None,
          penalty: int = 0, **kw: Any) -> AgentProfile:
    return AgentProfile(agent_id, skills=skills or {}, queues={q: Membership(penalty=penalty) for q in queues}, **kw)


def engine(queues: Sequence[QueueConfig], agents: Sequence[AgentProfile], login: bool = True,
           config: EngineConfig | None = None, seed: int = 0, now: int = 0) -> AcdEngine:
    e = AcdEngine(queues, agents, config=config or EngineConfig(), rng=random.Random(seed))
    if login:
        for a in agents:
            e.handle(AgentLoggedIn(a.agent_id), now)
    return e


def of(actions: Sequence[Action], kind: type[T]) -> list[T]:
    return [a for a in actions if isinstance(a, kind)]


def logs(actions: Sequence[Action], kind: LogKind) -> list[QueueLog]:
    return [a for a in actions if isinstance(a, QueueLog) and a.kind is kind]
