"""Exceptions a flow (or any application driving a call) sees; ``ccpbx.pbx`` raises them, flows catch them.

They live here, in a package that imports nothing of ours, so IVR flows and the ACD adapter can name them
without importing the PBX (ARCHITECTURE.md: ``ivr`` declares the protocol, ``pbx`` implements it).
"""

from __future__ import annotations

__all__ = ["CallHangup", "CallTransferred", "FlowError", "PromptNotFoundError", "SpeechUnavailableError"]


class CallHangup(Exception):  # noqa: N818 - the name flows catch, as Asterisk's AGI "HANGUP" and FreeSWITCH's
    """The party hung up (or cancelled) while an operation on its call was waiting.

    Raised at the flow's next ``await`` on the call (``play``, ``next_digit``, ``dial``...), so cleanup goes in
    ``finally`` blocks or an ``except CallHangup`` around the flow's body.
    """


class CallTransferred(BaseException):
    """Raised by ``await call.transfer(...)``: the call has left the flow for ``destination``.

    A ``BaseException`` so that a flow's ``except Exception`` around its own logic cannot swallow a transfer;
    ``finally`` blocks still run. The flow runner catches it and sends the call on.
    """

    def __init__(self, destination: str) -> None:
        super().__init__(destination)
        self.destination = destination


class FlowError(Exception):
    """A flow asked for something that cannot be done (a bad argument, an unknown schedule)."""


class PromptNotFoundError(FlowError, LookupError):
    """``play(name)`` named a prompt that is in none of the prompt directories and is not a file or a tone."""


class SpeechUnavailableError(FlowError):
    """``say(text)`` needs espeak-ng, which is not installed (``apt-get install espeak-ng``)."""
