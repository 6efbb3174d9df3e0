"""The event loop the in-process consumers (zapstream and bare) run on: `zapstream work`'s own.

zapstream.run.run_command runs `zapstream work` on uvloop where it is installed, else on
asyncio's loop; the bench calls it too, so that it measures what production runs.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from zapstream import run

T = TypeVar("T")


def event_loop_name() -> str:
    return "asyncio" if run.uvloop is None else "uvloop"


def run_like_work(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` to completion on the loop `zapstream work` runs on."""
    return cast(T, run.run_command(cast(Coroutine[Any, Any, int], main)))
