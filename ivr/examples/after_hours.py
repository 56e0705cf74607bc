"""Office hours or a message: during the "office" schedule callers reach the team, otherwise they hear that
the office is closed and leave a message in the team's voicemail box.

Demo: dial 701 (the demo's "office" schedule is Monday to Friday, 08:00 to 18:00 UTC).
"""

from __future__ import annotations

from ccpbx.ivr.flow import Call

TEAM = "queue:support"
MAILBOX = "voicemail:1001"


async def main(call: Call) -> None:
    if call.in_schedule("office"):
        await call.transfer(TEAM)
    await call.answer()
    await call.play("closed")
    await call.transfer(MAILBOX, data={"after_hours": True})
