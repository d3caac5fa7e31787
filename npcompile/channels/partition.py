"""Index maps between channel groups: a partition of every source group into aligned segments.

During the analysis every weight-bearing op opens a *source* group of channels ``0 .. n-1``. When
channels of two sources (or two windows of one source) meet in an elementwise op, they must be
removed together index by index: channel ``lo1 + i`` of one with channel ``lo2 + i`` of the other.
:class:`Partition` records these couplings as *classes*: each class is a set of equal-length
segments ``(source, start)`` whose channels are aligned, so that channel ``j`` of the class is
channel ``start + j`` of every segment. A coupling of two ranges cuts the sources at the range
bounds (splitting the classes that span them, in every member segment at the same offset) and
merges the aligned classes pairwise. Coupling whole sources merges whole groups; coupling a slice
(a Split output, a Slice window, a Concat part) refines a group into the part that couples
elsewhere and the part that does not (YOLO's C2f shortcut, GLU halves, unrolled recurrent gates).

The classes at the end of the analysis are the channel groups users see and prune.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["Partition", "Segment"]


@dataclass(frozen=True, order=True)
class Segment:
    """Channels ``[start, start + length)`` of source ``source``."""

    source: int
    start: int
    length: int


@dataclass
class _Class:
    length: int
    members: list[tuple[int, int]] = field(default_factory=list)  # (source, start)


class Partition:
    """Aligned segments of source groups, merged into classes (see the module docstring)."""

    def __init__(self) -> None:
        self._sizes: dict[int, int] = {}
        self._starts: dict[int, list[int]] = {}  # source -> sorted segment starts
        self._class_of: dict[tuple[int, int], int] = {}  # (source, start) -> class id
        self._classes: dict[int, _Class] = {}
        self._next = 0

    # -- building ---------------------------------------------------------------------------
    def add_source(self, source: int, size: int) -> None:
        """A new source of ``size`` channels, one class of its own."""
        if source in self._sizes:
            raise ValueError(f"source {source} exists")
        self._sizes[source] = size
        self._starts[source] = [0]
        self._class_of[(source, 0)] = self._new_class(size, [(source, 0)])

    def couple(self, a: int, a_start: int, b: int, b_start: int, length: int) -> None:
        """Channels ``a_start + i`` of source ``a`` and ``b_start + i`` of ``b`` (``0 <= i <
        length``) are removed together."""
        if length <= 0:
            return
        for src, lo in ((a, a_start), (b, b_start)):
            if lo < 0 or lo + length > self._sizes[src]:
                raise ValueError(f"range [{lo}, {lo + length}) outside source {src} of {self._sizes[src]}")
            self._cut(src, lo)
            self._cut(src, lo + length)
        i = 0
        while i < length:
            ca, la = self._segment_at(a, a_start + i)
            cb, lb = self._segment_at(b, b_start + i)
            if la > lb:
                self._split_class(ca, lb)
            elif lb > la:
                self._split_class(cb, la)
            step = min(la, lb)
            ca, _ = self._segment_at(a, a_start + i)
            cb, _ = self._segment_at(b, b_start + i)
            if ca != cb:
                self._merge(ca, cb)
            i += step

    def cut(self, source: int, pos: int) -> None:
        """Make ``pos`` a segment boundary of ``source`` (a window that is about to be treated
        as a unit of its own)."""
        self._cut(source, pos)

    # -- queries ----------------------------------------------------------------------------
    def resolve(self, source: int, start: int, stop: int) -> list[tuple[int, int, int]]:
        """Channels ``[start, stop)`` of ``source`` as ``(class, class_start, class_stop)`` runs,
        in order."""
        out: list[tuple[int, int, int]] = []
        starts = self._starts[source]
        pos = start
        while pos < stop:
            k = bisect.bisect_right(starts, pos) - 1
            seg = starts[k]
            cid = self._class_of[(source, seg)]
            end = min(stop, seg + self._classes[cid].length)
            out.append((cid, pos - seg, end - seg))
            pos = end
        return out

    def classes(self) -> list[tuple[int, int, list[Segment]]]:
        """Every class as ``(id, length, segments)``, ordered by its first segment (lowest source,
        then start); segments in the same order."""
        rows = []
        for cid, c in self._classes.items():
            segs = sorted(Segment(s, st, c.length) for s, st in c.members)
            rows.append((segs[0].source, segs[0].start, cid, c.length, segs))
        rows.sort(key=lambda r: (r[0], r[1]))
        return [(cid, length, segs) for _, _, cid, length, segs in rows]

    # -- internals --------------------------------------------------------------------------
    def _new_class(self, length: int, members: list[tuple[int, int]]) -> int:
        cid = self._next
        self._next += 1
        self._classes[cid] = _Class(length, members)
        return cid

    def _segment_at(self, source: int, pos: int) -> tuple[int, int]:
        """(class, length) of the segment of ``source`` that starts exactly at ``pos``."""
        cid = self._class_of[(source, pos)]
        return cid, self._classes[cid].length

    def _cut(self, source: int, pos: int) -> None:
        if pos <= 0 or pos >= self._sizes[source]:
            return
        starts = self._starts[source]
        k = bisect.bisect_right(starts, pos) - 1
        seg = starts[k]
        if seg == pos:
            return
        self._split_class(self._class_of[(source, seg)], pos - seg)

    def _split_class(self, cid: int, offset: int) -> None:
        """Cut class ``cid`` after ``offset`` channels, in every member segment."""
        c = self._classes[cid]
        assert 0 < offset < c.length
        tail = [(s, st + offset) for s, st in c.members]
        new = self._new_class(c.length - offset, tail)
        c.length = offset
        for s, st in tail:
            bisect.insort(self._starts[s], st)
            self._class_of[(s, st)] = new

    def _merge(self, a: int, b: int) -> None:
        ca, cb = self._classes[a], self._classes[b]
        assert ca.length == cb.length
        if len(cb.members) > len(ca.members):
            a, b, ca, cb = b, a, cb, ca
        for m in cb.members:
            self._class_of[m] = a
        ca.members.extend(cb.members)
        del self._classes[b]
