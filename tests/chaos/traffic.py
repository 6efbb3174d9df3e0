"""The chaos run's customers: seeded bursts of messages posted to the webhook as Meta posts
them (signed, retried on anything but 200 until it takes them), with duplicate deliveries,
whole notifications re-sent later and serialised differently, a few undecodable messages and
a few forged signatures.

    plan = make_plan(random.Random(seed), customers=200, span=40.0)
    meta = Meta(http, url)
    await asyncio.gather(*(meta.customer(c) for c in plan))
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx

from tests.notifications import BUSINESS, SECRET, envelope, signed_headers, text_message, wire

TEXTS = [
    "oi",
    "bom dia",
    "qual o horário de domingo?",
    "vocês entregam?",
    "quanto custa o frete?",
    "aceitam pix?",
    "quero saber do meu pedido",
    "hello",
    "are you open on sunday?",
    "do you deliver?",
    "hmm",
    "ok",
]
HUMAN = "quero falar com um atendente"  # the rules responder hands the session over
RETRY_FOR_S = 90.0  # Meta retries far longer; the run must never need this long


@dataclass
class Post:
    """One notification: its messages' wamids, and how it is delivered."""

    messages: list[dict[str, object]]
    twice: bool = False  # delivered twice at once (Meta's near-simultaneous duplicate)
    again_after: float = 0.0  # re-sent this long after, serialised differently (a retry)


@dataclass
class Customer:
    number: str
    start: float  # seconds into the run
    # Each burst: the pause before it, then its notifications with the gaps before them.
    bursts: list[tuple[float, list[tuple[float, Post]]]] = field(default_factory=list)
    poison: bool = False  # the Graph stand-in refuses its replies with an unknown code

    @property
    def wamids(self) -> list[str]:
        return [
            str(m["id"]) for _, posts in self.bursts for _, post in posts for m in post.messages
        ]


def make_plan(
    rng: random.Random, *, customers: int, span: float, poison: int, hostile: int
) -> list[Customer]:
    """`customers` customers starting within `span` seconds, each 1 to 3 bursts of 1 to 4
    messages; `poison` of them refused by the stand-in, `hostile` of them sending an
    undecodable message too."""
    plan = []
    poisoned = set(rng.sample(range(customers), poison))
    hostiles = set(rng.sample(sorted(set(range(customers)) - poisoned), hostile))
    for n in range(customers):
        customer = Customer(number=f"1556{n:07d}", start=rng.uniform(0, span), poison=n in poisoned)
        count = 0
        for b in range(rng.randint(1, 3)):
            pause = 0.0 if b == 0 else rng.uniform(1.0, 4.0)
            posts: list[tuple[float, Post]] = []
            size = rng.randint(1, 4)
            texts = [rng.choice(TEXTS) for _ in range(size)]
            if rng.random() < 0.03:
                texts[-1] = HUMAN
            messages = []
            for text in texts:
                count += 1
                messages.append(text_message(f"wamid.CHAOS.{n}.{count}", customer.number, text))
            if n in hostiles and b == 0:
                count += 1
                bad = text_message(f"wamid.CHAOS.{n}.{count}", customer.number, "")
                bad["text"] = 7  # undecodable: logged as message.rejected, never dropped
                messages.append(bad)
            # Meta sends a burst as one notification now and then, mostly one each.
            groups = [messages] if rng.random() < 0.2 else [[m] for m in messages]
            for group in groups:
                gap = rng.choice([0.03, 0.08, 0.15]) if posts else 0.0
                post = Post(messages=group)
                chance = rng.random()
                if chance < 0.1:
                    post.twice = True
                elif chance < 0.15:
                    post.again_after = rng.uniform(3.0, 15.0)
                posts.append((gap, post))
            customer.bursts.append((pause, posts))
        plan.append(customer)
    return plan


@dataclass
class Tally:
    """What the webhook answered, over the run."""

    posts: int = 0  # POSTs that got their 200
    duplicates: int = 0  # deliveries of a notification already taken (twice, again)
    refused: int = 0  # 503s and connections refused, each retried as Meta does
    forged: int = 0  # bad signatures, each answered 401
    took: list[float] = field(default_factory=list)  # seconds until each notification's 200


class Meta:
    """Meta's side of the webhook: POST until 200, backing off, for up to RETRY_FOR_S."""

    def __init__(self, http: httpx.AsyncClient, url: str, started: float) -> None:
        self.http = http
        self.url = url
        self.started = started  # time.monotonic() the run's clock starts at
        self.tally = Tally()
        self.later: list[asyncio.Task[None]] = []

    async def customer(self, customer: Customer) -> None:
        await self._until(customer.start)
        for pause, posts in customer.bursts:
            await asyncio.sleep(pause)  # the customer's rhythm: input, not synchronisation
            for gap, post in posts:
                await asyncio.sleep(gap)
                await self.deliver(post)

    async def deliver(self, post: Post) -> None:
        body = wire(_notification(post.messages))
        if post.twice:
            await asyncio.gather(self.post(body), self.post(body))
            self.tally.duplicates += 1
        else:
            await self.post(body)
        if post.again_after:
            self.later.append(asyncio.create_task(self._again(post)))

    async def forge(self) -> None:
        """A notification signed with another secret: 401, nothing appended."""
        body = wire(_notification([text_message("wamid.FORGED", "15569999999", "oi")]))
        response = await self.http.post(
            self.url, content=body, headers=signed_headers(body, "not-the-secret")
        )
        assert response.status_code == 401, response.text
        self.tally.forged += 1

    async def post(self, body: bytes) -> None:
        started = time.monotonic()
        pause = 0.1
        while True:
            try:
                response = await self.http.post(
                    self.url, content=body, headers=signed_headers(body, SECRET)
                )
                if response.status_code == 200:
                    self.tally.posts += 1
                    self.tally.took.append(time.monotonic() - started)
                    return
                assert response.status_code == 503, f"{response.status_code}: {response.text}"
            except httpx.TransportError:
                pass  # the webhook is restarting or overloaded: Meta retries too
            self.tally.refused += 1
            if time.monotonic() - started > RETRY_FOR_S:
                raise AssertionError(f"the webhook refused a notification for {RETRY_FOR_S}s")
            await asyncio.sleep(pause)  # Meta's retry backoff: the retry is the input
            pause = min(pause * 2, 1.0)

    async def _again(self, post: Post) -> None:
        """Meta re-sends a notification it thinks undelivered, serialised its own way."""
        await asyncio.sleep(post.again_after)
        document = _notification(post.messages)
        body = json.dumps(document, indent=1, ensure_ascii=False).encode()
        await self.post(body)
        self.tally.duplicates += 1

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, self.started + at - time.monotonic()))


def _notification(messages: list[dict[str, object]]) -> dict[str, object]:
    senders = sorted({str(m["from"]) for m in messages})
    contacts = [{"profile": {"name": f"Customer {s[-4:]}"}, "wa_id": s} for s in senders]
    return envelope({"contacts": contacts, "messages": messages}, BUSINESS)
