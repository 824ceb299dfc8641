"""Layout algebra of the TFLite lowering: when a reshape or a transpose of permuted data is only a view.

A lowered tensor holds ONNX data x in storage order p: stored = x.transpose(p).

- Moving axes of size 1 changes no byte: a TRANSPOSE that only does that is a RESHAPE.
- ONNX Reshape S_in → S_out splits the axes (size-1 axes aside) into groups whose products
  match, consecutive in both shapes (row-major).  If every group's input axes are stored next to
  each other and in ONNX order, the reshape is a view of the stored data too, and the output is
  stored in order q: the groups in their stored order, each group's output axes in ONNX order
  (`reshape_layout`).  Otherwise the data must first go back to ONNX order.
"""

from __future__ import annotations

__all__ = ["moves_only_unit_axes", "reshape_layout"]


def moves_only_unit_axes(shape: tuple[int, ...], relative: tuple[int, ...]) -> bool:
    """Transposing stored data of `shape` by `relative` keeps the order of every axis of size > 1."""
    kept = [a for a in relative if shape[a] != 1]
    return kept == sorted(kept)


def _groups(s_in: tuple[int, ...], s_out: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Pairs (input axes, output axes), size-1 axes left out, whose sizes multiply to the same number."""
    ins = [a for a in range(len(s_in)) if s_in[a] != 1]
    outs = [a for a in range(len(s_out)) if s_out[a] != 1]
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(ins) or j < len(outs):
        gi, gj, pi, pj = [], [], 1, 1
        while True:
            if pi <= pj and i < len(ins):
                gi.append(ins[i])
                pi *= s_in[ins[i]]
                i += 1
            elif j < len(outs):
                gj.append(outs[j])
                pj *= s_out[outs[j]]
                j += 1
            else:
                return None
            if pi == pj and gi and gj:
                break
        groups.append((gi, gj))
    return groups


def reshape_layout(s_in: tuple[int, ...], perm: tuple[int, ...], s_out: tuple[int, ...]) -> tuple[int, ...] | None:
    """The storage order of the reshaped output if the reshape is a view of data stored in `perm`, else None."""
    groups = _groups(s_in, s_out)
    if groups is None:
        return None
    stored = [a for a in perm if s_in[a] != 1]
    position = {a: k for k, a in enumerate(stored)}
    runs = []
    for gi, gj in groups:
        at = [position[a] for a in gi]
        if at != list(range(at[0], at[0] + len(at))):  # not stored together, in ONNX order
            return None
        runs.append((at[0], gj))
    order = [a for _, gj in sorted(runs) for a in gj]
    for a in range(len(s_out)):  # size-1 axes: at their ONNX position, where it still exists
        if s_out[a] == 1:
            order.insert(min(a, len(order)), a)
    return tuple(order)
