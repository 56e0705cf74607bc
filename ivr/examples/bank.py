"""A bank's phone line: identify by account number, then balance, an adviser, or the opening hours.

Callers whose number the bank knows as VIP skip the menu and reach an adviser with a higher queue priority.
``ACCOUNTS`` and ``VIP_NUMBERS`` stand in for the bank's systems: replace ``find_account`` with a look-up in
yours (an ``async`` HTTP or database call is fine: a caller who hangs up cancels it).

Demo: dial 700. Account 12345678 is known; 1002 is a VIP caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from ccpbx.ivr.flow import Call

ADVISERS = "queue:support"  # the demo queue (dial 500): the demo extensions log in with *61
VIP_PRIORITY = 10
NORMAL_PRIORITY = 0
ACCOUNT_DIGITS = 8


@dataclass(frozen=True)
class Account:
    number: str
    holder: str
    balance: int  # whole euros


ACCOUNTS = {"12345678": Account("12345678", "Ada Lovelace", 1843)}
VIP_NUMBERS = {"1002"}


async def find_account(number: str) -> Account | None:
    return ACCOUNTS.get(number)


async def main(call: Call) -> None:
    await call.answer()
    if call.caller in VIP_NUMBERS:
        await call.play("bank-vip-welcome")
        await call.transfer(ADVISERS, priority=VIP_PRIORITY, data={"vip": True})
    await call.play("bank-welcome")
    account = await identify(call)
    if account is not None:
        call.data.update({"account": account.number, "holder": account.holder})
    for _ in range(3):
        choice = await call.menu("bank-menu", ["1", "2", "3"])
        if choice == "1" and account is not None:
            await call.play("bank-balance-is")
            await call.say_number(account.balance)
            await call.play("euros")
        elif choice == "3":
            await call.play("bank-hours")
        else:  # 2, the balance without an account, or no valid choice: a person helps
            await call.play("bank-connecting")
            await call.transfer(ADVISERS, priority=NORMAL_PRIORITY)
    await call.play("goodbye")
    await call.hangup()


async def identify(call: Call) -> Account | None:
    """Up to three tries at the account number; None lets the caller on without one."""
    for _ in range(3):
        digits = await call.collect(ACCOUNT_DIGITS, timeout=8, prompt="bank-enter-account")
        if not digits:
            continue
        account = await find_account(digits)
        if account is not None:
            return account
        await call.play("bank-unknown-account")
    return None
