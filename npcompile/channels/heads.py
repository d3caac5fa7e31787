"""Attention blocks as the channel analysis sees them: heads (and key/value groups for grouped-query
attention) and head_dim per block, for ``inspect`` and the compile report."""

from __future__ import annotations

from typing import Any

from npcompile.channels.analysis import ChannelAnalysis

__all__ = ["attention_blocks", "heads_after"]


def _block_name(node: str) -> str:
    """The block a head-splitting node belongs to: its name without the last path component
    (``/model/layers.0/self_attn/Reshape`` -> ``/model/layers.0/self_attn``)."""
    return node.rsplit("/", 1)[0] if "/" in node.strip("/") else node


def attention_blocks(analysis: ChannelAnalysis) -> list[dict[str, Any]]:
    """One entry per attention block (a group of heads that no other group of heads removes):
    ``block`` (name), ``heads`` (query heads), ``kv_groups`` (key/value heads where grouped-query
    attention shares them, else None), ``head_dim``, ``heads_group`` and ``kv_group`` (the group
    names whose widths are the head and key/value-group counts), ``prunable`` and ``frozen``."""
    by_id = {g.id: g for g in analysis.groups}
    heads = {g.id for g in analysis.groups if g.kind == "heads"}
    out: list[dict[str, Any]] = []
    for gid in sorted(heads):
        g = by_id[gid]
        if g.locked_by is not None and g.locked_by in heads:
            continue  # query heads of a key/value group: reported with that group
        queries = [by_id[q] for q in heads if by_id[q].locked_by == gid]
        members = {gid, *(q.id for q in queries)}
        links = [lk for lk in analysis.links if lk.locked and lk.units in members and lk.neurons not in heads]
        head_dim = links[0].k if links else None
        split = next((lk.node for lk in links if lk.tensor), links[0].node if links else g.name)
        q = queries[0] if queries else None
        out.append({
            "block": _block_name(split),
            "heads": q.size if q is not None else g.size,
            "kv_groups": g.size if q is not None else None,
            "head_dim": head_dim,
            "heads_group": q.name if q is not None else g.name,
            "kv_group": g.name if q is not None else None,
            "prunable": g.prunable,
            "frozen": list(g.frozen),
        })
    return out


def heads_after(blocks: list[dict[str, Any]], groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``blocks`` (from :func:`attention_blocks` on the original model) with the counts after
    compiling: ``heads_before``/``heads_after`` (and ``kv_groups_before``/``kv_groups_after``), read
    from the report's groups (``name``, ``width_before``, ``width_after``)."""
    widths = {g["name"]: (g["width_before"], g["width_after"]) for g in groups}
    rows = []
    for b in blocks:
        h0, h1 = widths.get(b["heads_group"], (b["heads"], b["heads"]))
        row = {"block": b["block"], "heads_before": h0, "heads_after": h1, "head_dim": b["head_dim"],
               "prunable": b["prunable"], "frozen": b["frozen"]}
        if b["kv_group"] is not None:
            k0, k1 = widths.get(b["kv_group"], (b["kv_groups"], b["kv_groups"]))
            row.update(kv_groups_before=k0, kv_groups_after=k1)
        rows.append(row)
    return rows
