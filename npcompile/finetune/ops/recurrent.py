"""Recurrent layers: LSTM, GRU and RNN, every direction (forward, reverse, bidirectional), layouts
0 and 1, with or without ``initial_h``/``initial_c``, ``sequence_lens``, peepholes, ``clip``,
``input_forget``, GRU's ``linear_before_reset`` 0 and 1, and the activations that need no
parameters (the defaults, and Relu, Softsign, Softplus...).

W, R and B (and LSTM's peepholes P) are trainable; an initial state that is a constant stays one.
Gate orders are ONNX's (LSTM: i, o, f, c; GRU: z, r, h). Where torch's fused kernels compute the
same function (default activations, no clip, peepholes, ``input_forget`` or ``sequence_lens``,
GRU with ``linear_before_reset=1`` as PyTorch exports it), they run; otherwise an explicit loop
over time steps does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from npcompile.finetune.registry import OpNode, register
from npcompile.finetune.tensors import present

Act = Callable[[torch.Tensor], torch.Tensor]

_ACTS: dict[str, Act] = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu, "softsign": F.softsign,
    "softplus": F.softplus,
}
#: gates and default activations per op: (gates, activations per direction, defaults)
_CELLS = {"LSTM": (4, ("Sigmoid", "Tanh", "Tanh")), "GRU": (3, ("Sigmoid", "Tanh")), "RNN": (1, ("Tanh",))}


def _directions(node: OpNode) -> int:
    return 2 if node.get("direction", "forward") == "bidirectional" else 1


def _activation_names(node: OpNode) -> list[str]:
    per_dir = _CELLS[node.op][1]
    names = node.get("activations")
    d = _directions(node)
    if not names:
        return list(per_dir) * d
    names = list(names)
    if len(names) == len(per_dir) and d == 2:
        names = names * 2
    return names


def _check(node: OpNode) -> str | None:
    direction = node.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        return f"{node.op} direction {direction!r}"
    names = _activation_names(node)
    if len(names) != len(_CELLS[node.op][1]) * _directions(node):
        return f"{node.op} with {len(names)} activations"
    bad = sorted({n for n in names if n.lower() not in _ACTS})
    if bad:
        return f"{node.op} activation(s) {', '.join(bad)}"
    if node.get("activation_alpha") or node.get("activation_beta"):
        return f"{node.op} with activation_alpha/activation_beta"
    return None


def _default(node: OpNode) -> bool:
    """The activations are the op's defaults (RNN: Tanh or Relu throughout)."""
    names = [n.lower() for n in _activation_names(node)]
    if node.op == "RNN":
        return len(set(names)) == 1 and names[0] in ("tanh", "relu")
    return names == [n.lower() for n in _CELLS[node.op][1]] * _directions(node)


class _Seq:
    """Time-major inputs of one node with the layout and the optional inputs resolved."""

    def __init__(self, node: OpNode, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                 lens: torch.Tensor | None, states: list[torch.Tensor | None]) -> None:
        self.layout = node.get("layout", 0)
        self.x = x.transpose(0, 1) if self.layout else x
        self.steps, self.batch = int(self.x.shape[0]), int(self.x.shape[1])
        self.dirs = int(w.shape[0])
        self.hidden = int(node.get("hidden_size") or w.shape[1] // _CELLS[node.op][0])
        gates = _CELLS[node.op][0] * self.hidden
        self.b = b if present(b) else None
        self.w_bias = self.b[:, :gates] if self.b is not None else None
        self.r_bias = self.b[:, gates:] if self.b is not None else None
        self.lens = lens.long() if present(lens) else None
        self.states = []
        for s in states:
            if present(s):
                s = s.transpose(0, 1) if self.layout else s
            else:
                s = self.x.new_zeros(self.dirs, self.batch, self.hidden)
            self.states.append(s)

    def outputs(self, ys: list[torch.Tensor], finals: list[list[torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """Y ([steps, dirs, batch, hidden] or layout 1's [batch, steps, dirs, hidden]) and the final
        states, from per-direction outputs [steps, batch, hidden] and final states [batch, hidden]."""
        y = torch.stack(ys, 1)
        out = [y.permute(2, 0, 1, 3) if self.layout else y]
        for f in finals:
            s = torch.stack(f, 0)
            out.append(s.transpose(0, 1) if self.layout else s)
        return tuple(out)


def _order(steps: int, lens: torch.Tensor | None, reverse: bool, device: torch.device) -> torch.Tensor | None:
    """For the reverse direction, the time index each step reads ([steps, batch]): ``len-1-t``
    within a sequence's length, ``t`` beyond it; ``None`` when a plain flip does."""
    if not reverse or lens is None:
        return None
    t = torch.arange(steps, device=device).unsqueeze(1)
    return torch.where(t < lens.unsqueeze(0), lens.unsqueeze(0) - 1 - t, t)


def _time_gather(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 0, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _loop(seq: _Seq, d: int, reverse: bool, xw: torch.Tensor, cell: Callable[..., tuple[torch.Tensor, ...]],
          states: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``cell(x_t, *states) -> new states`` (the first is the output) over time for one
    direction; steps past a sequence's length keep the state and output zeros."""
    order = _order(seq.steps, seq.lens, reverse, xw.device)
    if reverse:
        xw = xw.flip(0) if order is None else _time_gather(xw, order)
    outs = []
    for t in range(seq.steps):
        new = cell(xw[t], *states)
        if seq.lens is not None:
            active = (t < seq.lens).unsqueeze(1)
            states = [torch.where(active, n, s) for n, s in zip(new, states, strict=True)]
            outs.append(torch.where(active, new[0], torch.zeros_like(new[0])))
        else:
            states = list(new)
            outs.append(new[0])
    y = torch.stack(outs, 0)
    if reverse:
        y = y.flip(0) if order is None else _time_gather(y, order)
    return y, states


def _dir_acts(node: OpNode, d: int) -> list[Act]:
    per = len(_CELLS[node.op][1])
    return [_ACTS[n.lower()] for n in _activation_names(node)[d * per:(d + 1) * per]]


def _clip(node: OpNode) -> Callable[[torch.Tensor], torch.Tensor]:
    c = node.get("clip")
    if c is None:
        return lambda t: t
    return lambda t: t.clamp(-float(c), float(c))


def _reversed(node: OpNode, d: int) -> bool:
    return node.get("direction", "forward") == "reverse" or d == 1


def _projected(seq: _Seq, w: torch.Tensor, d: int) -> torch.Tensor:
    """X·Wᵀ (+ Wb) for every step at once: [steps, batch, gates * hidden]."""
    xw = torch.matmul(seq.x, w[d].t())
    return xw if seq.w_bias is None else xw + seq.w_bias[d]


def _rec(h: torch.Tensor, r: torch.Tensor, rb: torch.Tensor | None) -> torch.Tensor:
    hr = torch.matmul(h, r.t())
    return hr if rb is None else hr + rb


# --------------------------------------------------------------------------- #
# explicit loops (every attribute)
# --------------------------------------------------------------------------- #


def _lstm_loop(node: OpNode, seq: _Seq, w: torch.Tensor, r: torch.Tensor, p: torch.Tensor | None
               ) -> tuple[torch.Tensor, ...]:
    clip, couple, hs = _clip(node), bool(node.get("input_forget", 0)), seq.hidden
    ys, finals = [], [[], []]
    for d in range(seq.dirs):
        f_act, g_act, h_act = _dir_acts(node, d)
        rd, rb = r[d], None if seq.r_bias is None else seq.r_bias[d]
        pi, po, pf = (p[d, :hs], p[d, hs:2 * hs], p[d, 2 * hs:]) if p is not None else (None, None, None)

        def cell(xt: torch.Tensor, h: torch.Tensor, c: torch.Tensor, rd=rd, rb=rb, pi=pi, po=po, pf=pf,
                 f_act=f_act, g_act=g_act, h_act=h_act) -> tuple[torch.Tensor, torch.Tensor]:
            i, o, f, g = (xt + _rec(h, rd, rb)).chunk(4, -1)
            if pi is not None:
                i, f = i + pi * c, f + pf * c
            i = f_act(clip(i))
            f = 1 - i if couple else f_act(clip(f))
            c = f * c + i * g_act(clip(g))
            if po is not None:
                o = o + po * c
            return f_act(clip(o)) * h_act(c), c

        y, (h, c) = _loop(seq, d, _reversed(node, d), _projected(seq, w, d), cell,
                          [seq.states[0][d], seq.states[1][d]])
        ys.append(y)
        finals[0].append(h)
        finals[1].append(c)
    return seq.outputs(ys, finals)


def _gru_loop(node: OpNode, seq: _Seq, w: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
    clip, hs, before = _clip(node), seq.hidden, bool(node.get("linear_before_reset", 0))
    ys, finals = [], [[]]
    for d in range(seq.dirs):
        f_act, g_act = _dir_acts(node, d)
        rd = r[d]
        rb = seq.r_bias[d] if seq.r_bias is not None else None

        def cell(xt: torch.Tensor, h: torch.Tensor, rd=rd, rb=rb, f_act=f_act, g_act=g_act
                 ) -> tuple[torch.Tensor]:
            xz, xr, xh = xt.chunk(3, -1)
            zr = _rec(h, rd[:2 * hs], None if rb is None else rb[:2 * hs])
            z = f_act(clip(xz + zr[..., :hs]))
            rr = f_act(clip(xr + zr[..., hs:]))
            rbh = None if rb is None else rb[2 * hs:]
            if before:
                hh = g_act(clip(xh + rr * _rec(h, rd[2 * hs:], rbh)))
            else:
                hh = g_act(clip(xh + _rec(rr * h, rd[2 * hs:], rbh)))
            return ((1 - z) * hh + z * h,)

        y, (h,) = _loop(seq, d, _reversed(node, d), _projected(seq, w, d), cell, [seq.states[0][d]])
        ys.append(y)
        finals[0].append(h)
    return seq.outputs(ys, finals)


def _rnn_loop(node: OpNode, seq: _Seq, w: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
    clip = _clip(node)
    ys, finals = [], [[]]
    for d in range(seq.dirs):
        (f_act,) = _dir_acts(node, d)
        rd, rb = r[d], None if seq.r_bias is None else seq.r_bias[d]

        def cell(xt: torch.Tensor, h: torch.Tensor, rd=rd, rb=rb, f_act=f_act) -> tuple[torch.Tensor]:
            return (f_act(clip(xt + _rec(h, rd, rb))),)

        y, (h,) = _loop(seq, d, _reversed(node, d), _projected(seq, w, d), cell, [seq.states[0][d]])
        ys.append(y)
        finals[0].append(h)
    return seq.outputs(ys, finals)


# --------------------------------------------------------------------------- #
# torch's fused kernels
# --------------------------------------------------------------------------- #

#: ONNX gate blocks in torch's order (LSTM: i, f, g, o; GRU: r, z, n)
_TORCH_ORDER = {"LSTM": [0, 2, 3, 1], "GRU": [1, 0, 2], "RNN": [0]}


def _fusable(node: OpNode, seq: _Seq, p: torch.Tensor | None) -> bool:
    if not _default(node) or node.get("clip") is not None or seq.lens is not None or p is not None:
        return False
    if node.op == "LSTM":
        return not node.get("input_forget", 0)
    if node.op == "GRU":
        return bool(node.get("linear_before_reset", 0))
    return True


def _torch_params(node: OpNode, seq: _Seq, w: torch.Tensor, r: torch.Tensor) -> list[torch.Tensor]:
    order, hs = _TORCH_ORDER[node.op], seq.hidden

    def reorder(t: torch.Tensor) -> torch.Tensor:
        if len(order) == 1:
            return t
        return t.reshape(len(order), hs, *t.shape[1:])[order].reshape(t.shape)

    params = []
    for d in range(seq.dirs):
        params += [reorder(w[d]), reorder(r[d])]
        if seq.b is not None:
            params += [reorder(seq.w_bias[d]), reorder(seq.r_bias[d])]
    return params


def _fused(node: OpNode, seq: _Seq, w: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, ...]:
    params = _torch_params(node, seq, w, r)
    bidir = seq.dirs == 2
    x = seq.x.flip(0) if node.get("direction", "forward") == "reverse" else seq.x
    args = (params, seq.b is not None, 1, 0.0, False, bidir, False)
    if node.op == "LSTM":
        y, h, c = torch.lstm(x, (seq.states[0], seq.states[1]), *args)
        finals = [h, c]
    elif node.op == "GRU":
        y, h = torch.gru(x, seq.states[0], *args)
        finals = [h]
    else:
        fn = torch.rnn_relu if _activation_names(node)[0].lower() == "relu" else torch.rnn_tanh
        y, h = fn(x, seq.states[0], *args)
        finals = [h]
    if node.get("direction", "forward") == "reverse":
        y = y.flip(0)
    y = y.reshape(seq.steps, seq.batch, seq.dirs, seq.hidden)
    return seq.outputs(list(y.unbind(2)), [list(f.unbind(0)) for f in finals])


@register("LSTM", static=(4, 5, 6), weights=(1, 2, 3, 7), check=_check)
def _lstm(node: OpNode, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None = None,
          lens: torch.Tensor | None = None, h0: torch.Tensor | None = None, c0: torch.Tensor | None = None,
          p: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    seq = _Seq(node, x, w, b, lens, [h0, c0])
    p = p if present(p) else None
    return _fused(node, seq, w, r) if _fusable(node, seq, p) else _lstm_loop(node, seq, w, r, p)


@register("GRU", static=(4, 5), weights=(1, 2, 3), check=_check)
def _gru(node: OpNode, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None = None,
         lens: torch.Tensor | None = None, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    seq = _Seq(node, x, w, b, lens, [h0])
    return _fused(node, seq, w, r) if _fusable(node, seq, None) else _gru_loop(node, seq, w, r)


@register("RNN", static=(4, 5), weights=(1, 2, 3), check=_check)
def _rnn(node: OpNode, x: torch.Tensor, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None = None,
         lens: torch.Tensor | None = None, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    seq = _Seq(node, x, w, b, lens, [h0])
    return _fused(node, seq, w, r) if _fusable(node, seq, None) else _rnn_loop(node, seq, w, r)
