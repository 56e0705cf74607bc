"""Exceptions a flow (or any application driving a call) sees; ``ccpbx.pbx`` raises them, flows catch them.

They live here, in a package that imports nothing of ours, so IVR flows and the ACD adapter can name them
without importing the PBX (ARCHITECTURE.md: ``ivr`` declares the protocol, ``pbx`` implements it).
"""

from __future__ import annotations

__all__ = ["CallHangup"]


class CallHangup(Exception):  # noqa: N818 - the name flows catch, as Asterisk's AGI "HANGUP" and FreeSWITCH's
    """The party hung up (or cancelled) while an operation on its call was waiting.

    Raised at the flow's next ``await`` on the call (``play``, ``next_digit``, ``dial``...), so cleanup goes in
    ``finally`` blocks or an ``except CallHangup`` around the flow's body.
    """
