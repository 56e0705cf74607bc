"""What the admin API and the CLI ask of the running ACD (``pbx.queues``): live figures and agent commands.

A small protocol of its own so the admin API (and tests) need not import the queue adapter: the server hands
its ``Queues`` to the live view, which serves ``GET /api/queues`` and ``POST /api/agents/{ext}/{action}``.
"""

from __future__ import annotations

import enum
from typing import Any, Protocol

__all__ = ["AgentAction", "AgentCommandError", "QueueControl"]


class AgentAction(enum.StrEnum):
    LOGIN = "login"
    LOGOUT = "logout"
    PAUSE = "pause"
    UNPAUSE = "unpause"


class AgentCommandError(ValueError):
    """An agent command that cannot be carried out (unknown agent or queue); the message says why."""


class QueueControl(Protocol):
    def snapshot(self) -> dict[str, Any]:
        """JSON-ready live figures::

            {"queues": [{"name", "open", "waiting", "callbacks_waiting", "ringing", "longest_wait_s", "staffed",
                         "agents": {"available": n, "on-contact": n, ...}, "answered", "answered_within_sl",
                         "abandoned", "overflowed", "callbacks_requested", "callbacks_completed",
                         "service_level" (0..1 or null), "service_level_s", "asa_s" (or null), "ewt_s" (or null)}],
             "agents": [{"extension", "state", "time_in_state_s", "pause_reason", "device_available",
                         "device_reason", "answered", "queues": [names]}],
             "since": ISO time the counters were last reset (midnight)}
        """

    async def agent_command(self, extension: str, action: AgentAction, *, queue: str | None = None,
                            reason: str | None = None) -> None:
        """Log an agent in or out (of every queue it serves, or of ``queue`` only), pause or unpause it.

        Raises :class:`AgentCommandError` for an extension that is no agent or a queue it does not serve.
        """
