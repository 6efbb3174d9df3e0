"""The offline rules responder: intents in Portuguese and English, media, human requests."""

from __future__ import annotations

import pytest

from processors.groups import pick_responder
from processors.responder import Prompt
from processors.rules import RulesResponder, load_rules
from zapstream.settings import ConfigError, Settings


def prompt(*messages: str, kinds: list[str] | None = None) -> Prompt:
    return Prompt(
        session_id="s",
        turn_id="1",
        messages=list(messages),
        kinds=kinds or ["text"] * len(messages),
        context=[],
    )


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (("Hi! Are you open on Sunday?",), "Sundays 10am"),
        (("Olá! Vocês abrem no domingo?",), "aos domingos"),
        (("do you deliver to Rua das Flores?",), "We deliver"),
        (("ola", "vocês fazem entrega?"), "Entregamos"),
        (("and can I pay on delivery?",), "We deliver"),
        (("posso pagar com pix?",), "Aceitamos Pix"),
        (("Is the blue one in stock?",), "your order"),
        (("bom dia",), "Olá! Como posso ajudar?"),
        (("xyzzy plugh",), "didn't quite get that"),
        (("asdf não entendi",), "Não entendi bem"),
    ],
)
async def test_intents_in_both_languages(messages: tuple[str, ...], expected: str) -> None:
    answer = await RulesResponder().answer(prompt(*messages))
    assert expected in answer.body
    assert not answer.handoff


@pytest.mark.parametrize(
    "text",
    [
        "quero falar com um atendente",
        "Posso falar com uma pessoa?",
        "I want a human",
        "let me talk to an agent please",
    ],
)
async def test_a_request_for_a_human_hands_over(text: str) -> None:
    answer = await RulesResponder().answer(prompt(text))
    assert answer.handoff


async def test_media_location_and_unsupported_get_their_answers() -> None:
    responder = RulesResponder()
    assert "Got your file" in (await responder.answer(prompt("[image]", kinds=["image"]))).body
    located = await responder.answer(prompt("[location] Harbour Lane Bakery", kinds=["location"]))
    assert "location" in located.body
    unreadable = await responder.answer(prompt("[unsupported]", kinds=["unsupported"]))
    assert "can't read" in unreadable.body


async def test_a_caption_is_read_for_intents() -> None:
    answer = await RulesResponder().answer(
        prompt("[image] what time do you open?", kinds=["image"])
    )
    assert "open Monday" in answer.body


def test_the_shipped_rules_load_and_unknown_responders_are_refused() -> None:
    assert {i.name for i in load_rules().intents} >= {"hours", "delivery", "payment"}
    assert isinstance(pick_responder(Settings()), RulesResponder)
    with pytest.raises(ConfigError, match="RESPONDER=openai"):
        pick_responder(Settings(responder="openai"))
