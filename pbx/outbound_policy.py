"""Toll-fraud limits on calls that leave through trunks: number classes and what each extension may call.

A stolen SIP password is worth money only when the phone can call out: premium numbers and far countries,
many calls at once. So every call out through a trunk is checked here first:

- its number is put in a class (:class:`~ccpbx.pbx.config.OutboundClass`) by the ``[outbound]`` patterns
  (emergency, premium, international, mobile, national, tried in that order; the rest are national), unless
  the route fixes the class;
- the calling extension must hold that class (``[outbound] classes``, or its ``[[outbound.extension]]``);
  emergency numbers are always allowed and never counted against a limit;
- it may have at most ``max_calls`` outside calls at once.

Pure: the caller passes how many outside calls the extension has now; the edge logs refusals as security
events (``security.outbound.refused``), in one stable line a fail2ban filter can match.
"""

from __future__ import annotations

from dataclasses import dataclass

from ccpbx.pbx.config import DialPattern, OutboundClass, OutboundConfig

__all__ = ["CLASS_ORDER", "OutboundPolicy", "Permission", "Refusal"]

# The order numbers are classified in: the first class whose patterns match wins.
CLASS_ORDER = (OutboundClass.EMERGENCY, OutboundClass.PREMIUM, OutboundClass.INTERNATIONAL, OutboundClass.MOBILE,
               OutboundClass.NATIONAL)


@dataclass(frozen=True, slots=True)
class Permission:
    """What one extension may do outside: its classes, its limit of simultaneous calls, its caller ID."""

    classes: frozenset[OutboundClass]
    max_calls: int
    caller_id: str = ""  # the number it shows outside ("" : the route's or the trunk's)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a call out is refused: ``kind`` is "class" or "limit"; ``status`` the SIP answer to the caller."""

    kind: str
    reason: str
    number_class: OutboundClass
    status: int = 403


class OutboundPolicy:
    """The ``[outbound]`` section, compiled; see the module docstring."""

    def __init__(self, config: OutboundConfig) -> None:
        self.config = config
        self._patterns: dict[OutboundClass, tuple[DialPattern, ...]] = {
            OutboundClass.EMERGENCY: config.emergency, OutboundClass.PREMIUM: config.premium,
            OutboundClass.INTERNATIONAL: config.international, OutboundClass.MOBILE: config.mobile,
            OutboundClass.NATIONAL: config.national,
        }
        self._default = Permission(frozenset(config.classes), config.max_calls)
        self._by_extension: dict[str, Permission] = {}
        for entry in config.extension:
            permission = Permission(
                frozenset(entry.classes) if entry.classes is not None else self._default.classes,
                entry.max_calls if entry.max_calls is not None else config.max_calls,
                entry.caller_id)
            for ext in entry.extensions:
                self._by_extension.setdefault(ext, permission)  # the first table naming an extension wins

    def classify(self, number: str) -> OutboundClass:
        """The class of ``number`` as it is routed (after the route's strip and prepend)."""
        for number_class in CLASS_ORDER:
            if any(pattern.matches(number) for pattern in self._patterns[number_class]):
                return number_class
        return OutboundClass.NATIONAL

    def permission(self, ext: str) -> Permission:
        return self._by_extension.get(ext, self._default)

    def check(self, ext: str, number: str, active_calls: int,
              route_class: OutboundClass | None = None) -> tuple[OutboundClass, Refusal | None]:
        """The class of a call from ``ext`` to ``number``, and a :class:`Refusal` when it may not be placed.

        ``active_calls``: the outside calls ``ext`` has up or ringing now (this one not counted).
        """
        number_class = route_class or self.classify(number)
        if number_class is OutboundClass.EMERGENCY:
            return number_class, None
        permission = self.permission(ext)
        if number_class not in permission.classes:
            return number_class, Refusal("class", f"{ext} may not call {number_class.value} numbers",
                                         number_class)
        if active_calls >= permission.max_calls:
            return number_class, Refusal(
                "limit", f"{ext} already has {active_calls} outside call(s) (limit {permission.max_calls})",
                number_class)
        return number_class, None
