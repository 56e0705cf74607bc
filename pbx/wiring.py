"""Which destination kinds this server has: one list, shared by ``ccpbx serve`` and ``ccpbx config check``.

Routing registers its own kinds (extension, group, hangup, feature); :func:`wire_destinations` plugs in the
others (conference rooms, IVR flows, ACD queues, voicemail, trunks) as their modules land, so a destination
the running server could not reach is refused when the configuration is checked, naming file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ccpbx.pbx.conference import Conferences
from ccpbx.pbx.config import Config, DestinationKind, config_problems_error, destination_references
from ccpbx.pbx.dialplan import DialPlan
from ccpbx.pbx.flows import IvrFlows
from ccpbx.pbx.location import LocationService
from ccpbx.pbx.queues import Queues
from ccpbx.pbx.routing import CallRouter
from ccpbx.pbx.trunks import Trunks
from ccpbx.pbx.voicemail import Voicemail

__all__ = ["Wired", "check_destinations", "wire_destinations"]


@dataclass(frozen=True, slots=True)
class Wired:
    """The applications wired in, for the composition root to start (and the admin API to reach)."""

    flows: IvrFlows
    queues: Queues
    voicemail: Voicemail
    trunks: Trunks


def wire_destinations(router: CallRouter, config: Config) -> Wired:
    """Register the destination kinds beyond routing's own on ``router``'s registry."""
    rooms = Conferences(config.conference, region=router.region)
    router.destinations.register(DestinationKind.CONFERENCE, rooms, validate=rooms.validate,
                                 description="a conference room")
    data_dir = config.server.data_dir if config.server.data_dir is not None else Path.cwd()
    flows = IvrFlows(router, config.ivr, data_dir)
    router.destinations.register(DestinationKind.IVR, flows, validate=flows.validate,
                                 description="an IVR flow (ivr:MODULE:FUNCTION)")
    queues = Queues(router, config)
    router.destinations.register(DestinationKind.QUEUE, queues, validate=queues.validate,
                                 description="an ACD queue")
    router.agent_features = queues.feature
    voicemail = Voicemail(config.voicemail, flows, data_dir)
    router.destinations.register(DestinationKind.VOICEMAIL, voicemail, description="an extension's mailbox")
    router.voicemail_feature = voicemail.feature
    trunks = Trunks(config, router)
    router.destinations.register(DestinationKind.TRUNK, trunks.dial_trunk, validate=trunks.validate_trunk,
                                 description="a SIP trunk (provider or gateway)")
    router.destinations.register(DestinationKind.ROUTE, trunks.dial_route, validate=trunks.validate_route,
                                 description="an outbound route (trunks in order, with failover)")
    return Wired(flows, queues, voicemail, trunks)


def check_destinations(config: Config) -> None:
    """Raise :class:`~ccpbx.pbx.config.ConfigError` (file, line, key) for a destination nothing can reach."""
    router = CallRouter(DialPlan.from_config(config), LocationService(), None,  # type: ignore[arg-type]
                        extensions=set)
    wire_destinations(router, config)
    registry = router.destinations
    problems = []
    for path, destination in destination_references(config):
        message = registry.problem(destination)
        if message is not None:
            problems.append((path, message))
    error = config_problems_error(config, problems)
    if error is not None:
        raise error
