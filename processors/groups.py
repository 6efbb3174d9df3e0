"""The groups table: group name -> handler, checked against streams.yaml at start.

A group is a plain async function `handler(ctx, delivery)`; add one here and configure it
under `groups:` in streams.yaml. No decorators, no registration at import time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from processors import debounce, handoff, responder, send, settle
from processors.openai_responder import OpenAIResponder
from processors.responder import Responder
from processors.rules import RulesResponder
from processors.runtime import Handler, Tick
from zapstream.settings import ConfigError, Settings
from zapstream.topology import Topology

HANDLERS: dict[str, Handler] = {
    "debounce": debounce.on_message_received,
    "respond": responder.on_turn_ready,
    "send": send.on_reply_generated,
    "settle": settle.on_status,
    "handoff": handoff.on_handoff,
}

# Periodic work a group does beside its entries, run by each of its consumers.
TICKS: dict[str, Tick] = {
    "debounce": debounce.close_due_windows,
}


def select_handlers(
    topology: Topology, names: Sequence[str], table: Mapping[str, Handler] = HANDLERS
) -> dict[str, Handler]:
    """The handlers of `names` (all groups of streams.yaml when empty), or ConfigError."""
    chosen = list(names) or list(topology.groups)
    if not chosen:
        raise ConfigError("no consumer groups in streams.yaml (see `groups:`)")
    for name in chosen:
        if name not in topology.groups:
            known = ", ".join(sorted(topology.groups)) or "none"
            raise ConfigError(f"unknown group {name!r} (streams.yaml declares: {known})")
        if name not in table:
            raise ConfigError(
                f"group {name!r} in streams.yaml has no handler in processors/groups.py"
            )
    return {name: table[name] for name in chosen}


def pick_responder(settings: Settings) -> Responder:
    """The Responder of RESPONDER: `rules` (offline, the default) or `openai`."""
    if settings.responder == "rules":
        return RulesResponder()
    if settings.responder == "openai":
        try:
            settings.require("openai_base_url", "openai_model")
        except ConfigError as err:
            raise ConfigError(f"RESPONDER=openai: {err}") from err
        return OpenAIResponder(
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            model=settings.openai_model,
        )
    raise ConfigError(f"RESPONDER={settings.responder} is not available (use rules or openai)")
