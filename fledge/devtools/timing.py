"""Wall time of overlapping activities: two servers starting at once cost one stretch of wall
time, not two. Used by the demo's "where the time went" table."""

from __future__ import annotations

Interval = tuple[float, float]


def union(intervals: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(i for i in intervals if i[1] > i[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def length(intervals: list[Interval]) -> float:
    return sum(end - start for start, end in union(intervals))


def overlap(a: list[Interval], b: list[Interval]) -> float:
    """Wall time covered by both `a` and `b`."""
    total = 0.0
    for a_start, a_end in union(a):
        for b_start, b_end in union(b):
            total += max(0.0, min(a_end, b_end) - max(a_start, b_start))
    return total
