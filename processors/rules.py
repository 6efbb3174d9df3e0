"""The offline `rules` responder: keyword intents from rules.yaml, in Portuguese and English."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import msgspec

from processors.responder import Answer, Prompt

RULES_PATH = Path(__file__).with_name("rules.yaml")


class Texts(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pt: str
    en: str


class Intent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    keywords: list[str]
    answer: Texts


class Human(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    keywords: list[str]
    answer: Texts


class Rules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    human: Human
    intents: list[Intent]
    fallback: Texts
    media: Texts
    location: Texts
    unsupported: Texts


MEDIA = frozenset({"image", "video", "audio", "document", "sticker"})
# Words that tell Portuguese from English when no accent does.
_PORTUGUESE = re.compile(
    r"\b(oi|ola|voce|voces|obrigad[oa]|nao|sim|quero|preciso|posso|tem|qual|quando|pedido|"
    r"pagar|bom dia|boa (tarde|noite)|por favor|entrega|horario|atendente|pessoa)\b"
)


def load_rules(path: Path = RULES_PATH) -> Rules:
    return msgspec.yaml.decode(path.read_bytes(), type=Rules)


def _plain(text: str) -> str:
    """Lowercase, accents removed: `Olá, HORÁRIO` -> `ola, horario`."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _matches(text: str, keywords: list[str]) -> bool:
    return any(re.search(rf"\b{re.escape(_plain(k))}\b", text) for k in keywords)


def asks_for_human(messages: list[str], rules: Rules | None = None) -> bool:
    """Whether the customer's messages ask for a person (rules.yaml's `human.keywords`)."""
    keywords = (rules or load_rules()).human.keywords
    return _matches(_plain(" ".join(messages)), keywords)


class RulesResponder:
    """Answers from keywords; never calls out, so it is the default and the tests' friend."""

    # An answer costs nothing and comes out the same again: it is stored with its claim
    # only (responder.py), one round trip less per turn.
    costly = False

    def __init__(self, rules: Rules | None = None) -> None:
        self.rules = rules or load_rules()

    async def answer(self, prompt: Prompt) -> Answer:
        said = " ".join(prompt.messages)
        text = _plain(said)
        language = (
            "pt"
            if (said != text and re.search(r"[ãõçáéíóúâêô]", said.lower()))
            or _PORTUGUESE.search(text)
            else "en"
        )
        rules = self.rules
        if asks_for_human(prompt.messages, rules):
            return Answer(body=getattr(rules.human.answer, language), handoff=True)
        for intent in rules.intents:
            if _matches(text, intent.keywords):
                return Answer(body=getattr(intent.answer, language))
        kinds = set(prompt.kinds)
        if kinds and kinds <= MEDIA | {"location", "unsupported"}:
            if "unsupported" in kinds:
                return Answer(body=getattr(rules.unsupported, language))
            if "location" in kinds:
                return Answer(body=getattr(rules.location, language))
            return Answer(body=getattr(rules.media, language))
        return Answer(body=getattr(rules.fallback, language))
