"""The load: signed webhook POSTs, one per new conversation, sent open-loop at a fixed rate.

Each conversation is a new customer sending one text, so nothing but the rate is shared
between them; they are spread over the business numbers in turn. Requests are built and
signed before the clock starts, with current WhatsApp timestamps. POST i is due at
start + i / rate whatever the answers to earlier POSTs (open loop): it goes out on an idle
keep-alive connection, or a new one when every connection waits for an answer. The client is
raw asyncio (HTTP/1.1, Content-Length answers only): httpx costs too much CPU at these rates
on two cores, and the generator shares them with the servers.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import msgspec

from zapstream.signing import sign
from zapstream.standin import text_notification

WEBHOOK_PATH = "/webhook/whatsapp"
TEXTS = (
    "what are your opening hours?",
    "do you deliver to my street?",
    "can I pay by card?",
    "are you open on sunday?",
)
# Keep-alive connections opened before the first POST, so that the first ones pay no connect.
WARM_CONNECTIONS = 16
# uvicorn closes a keep-alive connection idle for 5 s: one idle this long is not reused, lest
# the server close it just as a POST goes out (a failure of the generator, not of the server).
REUSE_IDLE_S = 4.0


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    customer: str  # the sender's wa_id; the reply goes to "+<customer>"
    request: bytes  # the whole HTTP request, signed


class Post(msgspec.Struct, frozen=True, kw_only=True):
    """One POST as the generator saw it: wall-clock times (time.time())."""

    customer: str
    due: float  # when the open-loop schedule wanted it sent
    sent: float  # when its bytes were written
    answered: float  # when its answer was read (0: none)
    status: int  # the HTTP status (0: the connection failed)


def business_number(number: int) -> str:
    return f"1000000000{number:05d}"


def customer_of(run: int, n: int) -> str:
    """Unique per run and conversation: `1` + run (3 digits) + n (8 digits)."""
    return f"1{run:03d}{n:08d}"


def build_conversations(
    webhook_url: str, secret: str, run: int, first: int, count: int, numbers: int
) -> list[Conversation]:
    """`count` conversations of `run`, numbered from `first`, each a signed HTTP request."""
    host = urlsplit(webhook_url).netloc.encode()
    conversations = []
    for n in range(first, first + count):
        customer = customer_of(run, n)
        body = text_notification(
            business_number(n % numbers), customer, f"wamid.E2E.{customer}", TEXTS[n % len(TEXTS)]
        )
        head = (
            b"POST " + WEBHOOK_PATH.encode() + b" HTTP/1.1\r\nHost: " + host + b"\r\n"
            b"Content-Type: application/json\r\nX-Hub-Signature-256: "
            + sign(body, secret).encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        conversations.append(Conversation(customer=customer, request=head + body))
    return conversations


class Connection(msgspec.Struct, kw_only=True):
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0  # time.monotonic() when its last answer was read


async def read_status(reader: asyncio.StreamReader) -> int:
    """One HTTP/1.1 answer read whole; its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(head[9:12])


class ConnectionPool:
    """Keep-alive connections to one server: the last idle one is reused, else a new one."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: list[Connection] = []
        self.opened = 0

    async def open(self, count: int) -> None:
        for _ in range(count):
            self.idle.append(await self._connect())

    async def _connect(self) -> Connection:
        self.opened += 1
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return Connection(reader=reader, writer=writer, idle_since=time.monotonic())

    async def _take(self) -> Connection:
        """The most recently used idle connection still fresh, else a new one."""
        while self.idle:
            connection = self.idle.pop()
            fresh = time.monotonic() - connection.idle_since < REUSE_IDLE_S
            if fresh and not connection.reader.at_eof():
                return connection
            connection.writer.close()
        return await self._connect()

    async def post(self, conversation: Conversation, due: float) -> Post:
        connection = await self._take()
        sent = time.time()
        try:
            connection.writer.write(conversation.request)
            status = await read_status(connection.reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            connection.writer.close()
            return Post(customer=conversation.customer, due=due, sent=sent, answered=0, status=0)
        answered = time.time()
        connection.idle_since = time.monotonic()
        self.idle.append(connection)
        return Post(
            customer=conversation.customer, due=due, sent=sent, answered=answered, status=status
        )

    def close(self) -> None:
        for connection in self.idle:
            connection.writer.close()
        self.idle.clear()


async def send_open_loop(url: str, conversations: list[Conversation], rate: float) -> list[Post]:
    """POST every conversation to `url`'s webhook, the i-th due at start + i / rate."""
    pool = ConnectionPool(url)
    await pool.open(WARM_CONNECTIONS)
    loop = asyncio.get_running_loop()
    posts: list[asyncio.Task[Post]] = []
    start_loop, start_wall = loop.time() + 0.01, time.time() + 0.01
    try:
        for n, conversation in enumerate(conversations):
            # Yields even when behind: the POSTs already due must get their turn.
            await asyncio.sleep(max(0.0, start_loop + n / rate - loop.time()))
            posts.append(loop.create_task(pool.post(conversation, start_wall + n / rate)))
        return list(await asyncio.gather(*posts))
    finally:
        pool.close()
