"""What the projection tests ask of a follower and its target: whether it has caught up with
the streams, and its rows (read_all) as they are now."""

from __future__ import annotations

from typing import Any

from projections.follower import Follower

Rows = dict[str, list[tuple[Any, ...]]]


async def caught_up(follower: Follower) -> bool:
    """Whether the follower's target has applied every stream up to its last entry."""
    ends = await follower.ends()
    positions = await follower.target.positions()
    return all(positions.get(key, "0-0") == end for key, end in ends.items() if end != "0-0")


async def model_rows(target: Any) -> Rows:
    found: Rows = await target.read_all()
    return found


async def same_rows(target: Any, expected: Rows) -> bool:
    """Whether the target's rows are `expected`; False while the model is being switched."""
    try:
        return await model_rows(target) == expected
    except Exception:  # the model is being switched over: ask again
        return False
