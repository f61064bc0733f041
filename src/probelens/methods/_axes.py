"""What each axis of every tensor in a forward pass *is*, followed op by op from the input image.

A :class:`AxisTracker` (a ``TorchDispatchMode``, active only for one traced forward) labels every tensor computed
from the image with one descriptor per axis. An axis is a row-major product of *atoms*: the batch (``N``), pieces of
the image grid's rows (``H``) and columns (``W``), features (``C``) or something unknown (``?``). The image starts as
``(N)(C)(H)(W)``; a convolution or pooling makes a fresh grid of its output size on axes that held a clean grid axis,
``Linear`` (``addmm``/``mm``) makes fresh features on the last axis, ``view``/``reshape`` split and merge atoms exactly,
``permute``/``transpose`` move them, ``cat`` records segments (a class token before the patch tokens), ``roll``
records a shift that a reverse roll undoes, and shape-keeping ops (elementwise, norms, softmax) keep them. An op the
tracker does not know makes its outputs unknown: a layout is never guessed.

So a layer's output is a map exactly when its axes say so (:func:`layout_facts`): the batch axis alone on dim 0, the
grid's rows and columns on their own axes (NCHW, NHWC) or together on the token axis (row-major, or in any other order,
e.g. Hiera's unrolled tokens, which are then read by an index), and the channels on the remaining axis.
Tensors that do not depend on the image (parameters, constants) carry no descriptor and agree with any axis.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

N, H, W, C, UNKNOWN, BROADCAST, CAT = "N", "H", "W", "C", "?", "B", "cat"
SPATIAL = (H, W)
VAGUE = (UNKNOWN, BROADCAST)  # axes that say nothing about positions: an unknown op's output, a broadcast copy


@dataclass(frozen=True)
class Atom:
    """A piece of an axis: ``size`` values of an index ``full`` long, at ``stride`` in it (``stride * size == full`` for
    the most significant piece, ``stride == 1`` for the least). ``tag`` tells axes that were made apart; ``shift`` is a
    pending ``roll``; ``segments`` (for ``role == "cat"``) are the concatenated parts, each ``(size, atoms)``."""

    role: str
    size: int
    stride: int
    full: int
    tag: int
    shift: int = 0
    segments: tuple[tuple[int, tuple[Atom, ...]], ...] = ()

    @property
    def top(self) -> bool:
        """The most significant piece of its index (a whole axis, or the coarse part of a split one)."""
        return self.stride * self.size == self.full


Dim = tuple[Atom, ...]
Desc = tuple[Dim, ...]  # one per tensor axis; None (no descriptor) for tensors that do not depend on the image

_tags = itertools.count(1)


Lineage = dict[int, set[int]]
"""Grid axes made from others (a strided convolution's output grid from its input grid): tag -> parent tags."""


def fresh(role: str, size: int, parents: Sequence[int] = (), lineage: Lineage | None = None) -> Dim:
    """A new axis of ``size`` (nothing for size 1: it holds one value and cannot mix anything), made from the axes
    tagged ``parents`` (recorded in ``lineage``)."""
    if size < 1 or (size == 1 and role not in SPATIAL):
        return ()  # a grid axis of one position is kept: a 1x1 map is still a map (constant, but readable)
    tag = next(_tags)
    if lineage is not None and parents:
        lineage[tag] = set(parents)
    return (Atom(role, size, 1, size, tag),)


def unknown(shape: Sequence[int]) -> Desc:
    return tuple(fresh(UNKNOWN, int(s)) for s in shape)


def image_desc(shape: Sequence[int]) -> Desc:
    """``(N)(C)(H)(W)`` for the input image."""
    n, c, h, w = (int(s) for s in shape)
    return (fresh(N, n), fresh(C, c), fresh(H, h), fresh(W, w))


def _size(dim: Dim) -> int:
    return math.prod(a.size for a in dim)


def _merge(dim: Sequence[Atom]) -> Dim:
    """Adjacent pieces of one index, coarse then fine, merged back (``H/4`` then ``4`` -> ``H``)."""
    out: list[Atom] = []
    if len(dim) == 1 and dim[0].size == 1 and dim[0].role in SPATIAL:
        return tuple(dim)  # a one-position grid axis
    for atom in dim:
        if atom.size <= 1:
            continue
        prev = out[-1] if out else None
        if (
            prev is not None
            and prev.role == atom.role != CAT
            and prev.tag == atom.tag
            and prev.shift == atom.shift
            and prev.stride == atom.stride * atom.size
        ):
            out[-1] = replace(prev, size=prev.size * atom.size, stride=atom.stride)
        else:
            out.append(atom)
    return tuple(out)


def reshape(desc: Desc, shape: Sequence[int]) -> Desc:
    """Split and merge atoms row-major into ``shape``; axes that cut an atom other than into factors are unknown."""
    pending = [a for dim in desc for a in dim if a.size > 1]
    out: list[Dim] = []
    for target in (int(s) for s in shape):
        dim: list[Atom] = []
        left = target
        while left > 1:
            if not pending:
                return unknown(shape)
            atom = pending.pop(0)
            if left % atom.size == 0:
                dim.append(atom)
                left //= atom.size
            elif atom.size % left == 0 and atom.role != CAT:
                inner = atom.size // left
                dim.append(replace(atom, size=left, stride=atom.stride * inner))
                pending.insert(0, replace(atom, size=inner))
                left = 1
            else:
                return unknown(shape)
        out.append(_merge(dim))
    if pending:
        return unknown(shape)
    return tuple(out)


def join(dims: Sequence[Dim | None], size: int, lineage: Lineage | None = None) -> Dim:
    """One axis from the operands of an elementwise op (``None``: an operand without a descriptor there).

    The operands must agree. An operand whose axis is vague there (made by an op the tracker does not know, or a
    broadcast copy) does not decide it: in ``x + f(x)`` the sum's index ``p`` is ``x``'s position ``p`` whatever ``f``
    did, exactly as for any other mixing (attention). Features joined with features are features; two axes that both
    say something and disagree (rows and columns, a grid and tokens) make an unknown axis.
    """
    known = [d for d in dims if d is not None]
    if size <= 1:
        firsts = [d for d in known if d]
        return firsts[0] if firsts and all(_untagged(d) == _untagged(firsts[0]) for d in firsts) else ()
    if not known:
        return fresh(UNKNOWN, size)
    informative = [d for d in known if not _vague(d)]
    if not informative:
        first = known[0]
        return first if all(_untagged(d) == _untagged(first) for d in known[1:]) else fresh(UNKNOWN, size)
    first = informative[0]
    if all(_untagged(d) == _untagged(first) for d in informative[1:]):
        # one grid (a residual sum of a shortcut and a branch that each downsampled to it): made from both
        if lineage is None or all(d == first for d in informative[1:]):
            return first
        out = []
        for i, atom in enumerate(first):
            tag = next(_tags)
            lineage[tag] = {d[i].tag for d in informative}
            out.append(replace(atom, tag=tag))
        return tuple(out)
    if all(all(a.role == C for a in d) for d in informative):
        return fresh(C, size)  # features joined with features (a residual sum of two projections) are features
    return fresh(UNKNOWN, size)


def _features(dim: Dim) -> bool:
    """An axis a ``Linear`` may mix into new features: channels, and the fine pieces of a grid that a space-to-depth
    step (Swin's patch merging) folded into them; not whole positions (a token-mixing MLP) and nothing unknown."""
    return (
        not _vague(dim)
        and all(a.role == C or (a.role in SPATIAL and not a.top) for a in dim)
        and not any(a.role == CAT and not all(_features(seg) for _, seg in a.segments) for a in dim)
    )


def _vague(dim: Dim) -> bool:
    return any(_has_role(dim, role) for role in VAGUE)


def _untagged(dim: Dim) -> tuple:
    """An axis's meaning without the identity of its pieces: features are features whichever layer made them."""
    return tuple(
        (a.role, a.size)
        if a.role == C
        else (a.role, a.size, a.stride, a.full, a.shift, tuple((n, _untagged(seg)) for n, seg in a.segments))
        for a in dim
    )


def clean_spatial(dim: Dim, padded: bool = False) -> Atom | None:
    """The axis is one grid axis, whole or its coarse part, with no pending shift (with ``padded``: also such an axis
    with a few padding positions before or after it, as a convolution or pooling reads it after ``F.pad``)."""
    if len(dim) == 1 and dim[0].role in SPATIAL and dim[0].top and dim[0].shift == 0:
        return dim[0]
    if padded and len(dim) == 1 and dim[0].role == CAT:
        grid = [seg for _, seg in dim[0].segments if not _vague(seg) and seg != ()]
        pads = sum(n for n, seg in dim[0].segments if _vague(seg) or seg == ())
        if len(grid) == 1 and len(grid[0]) == 1 and pads < grid[0][0].size:
            return clean_spatial(grid[0])
    return None


def _spatial_atoms(dim: Dim) -> list[Atom]:
    out: list[Atom] = []
    for atom in dim:
        if atom.role == CAT:
            for _, seg in atom.segments:
                out += _spatial_atoms(seg)
        elif atom.role in SPATIAL:
            out.append(atom)
    return out


def _has_role(dim: Dim, role: str) -> bool:
    return any(a.role == role or (a.role == CAT and any(_has_role(s, role) for _, s in a.segments)) for a in dim)


@dataclass(frozen=True)
class Facts:
    """What a descriptor says about a tensor as a map.

    Attributes:
        kind: ``"nchw"``, ``"nhwc"``, ``"tokens"`` or ``None`` (not a map).
        grid: ``(h, w)``.
        prefix: tokens before the grid on the token axis (class, register, distillation tokens).
        order: for tokens not in row-major order, ``order[i]`` is the token at grid position ``i`` (row-major).
        axes: the axes in words, for messages: ``"(batch, channels, H 32, W 32)"``.
    """

    kind: str | None
    grid: tuple[int, int] | None = None
    prefix: int = 0
    order: tuple[int, ...] | None = None
    axes: str = ""


def describe(desc: Desc | None) -> str:
    """``"(batch, channels, H 32, W 32)"``: each axis in words."""
    if desc is None:
        return "(does not depend on the input)"
    words = []
    for dim in desc:
        roles = [a.role for a in dim]
        if not dim:
            words.append("1")
        elif roles == [N]:
            words.append("batch")
        elif all(r == C for r in roles):
            words.append("channels")
        elif len(dim) == 1 and dim[0].role in SPATIAL:
            word = f"{dim[0].role} {dim[0].size}"
            words.append(word + (" (rolled)" if dim[0].shift else "") + ("" if dim[0].top else " (window-local)"))
        elif UNKNOWN in roles or BROADCAST in roles:
            words.append("unknown")
        elif set(roles) <= {H, W}:
            words.append("tokens " + "*".join(f"{a.role}{a.size}" for a in dim))
        else:
            words.append("mixed " + "*".join(sorted({r if r != CAT else "segments" for r in roles})))
    return "(" + ", ".join(words) + ")"


def _grid_run(atoms: list[Atom], role: str) -> tuple[int, int, int] | None:
    """For the ``role`` atoms on the map's position axes: ``(tag, finest stride, grid size)`` if they are one index's
    most significant pieces, with nothing missing between them."""
    mine = [a for a in atoms if a.role == role]
    if not mine or len({a.tag for a in mine}) != 1 or any(a.shift for a in mine):
        return None
    mine.sort(key=lambda a: -a.stride)
    if not mine[0].top:
        return None
    for coarse, fine in itertools.pairwise(mine):
        if coarse.stride != fine.stride * fine.size:
            return None
    finest = mine[-1].stride
    return mine[0].tag, finest, mine[0].full // finest


def _leftover_ok(desc: Desc, position_dims: set[int], tag: int, finest: int) -> bool:
    """Pieces of the grid outside the position axes may only be finer than the map (space-to-depth folds them into the
    channels), never on the batch axis and never coarser."""
    for i, dim in enumerate(desc):
        if i in position_dims:
            continue
        for atom in _spatial_atoms(dim):
            if atom.tag == tag and (i == 0 or atom.stride * atom.size > finest):
                return False
    return True


def layout_facts(desc: Desc | None, shape: Sequence[int]) -> Facts:
    """Read a descriptor as a map (see the module docstring) or say why not (``kind is None``)."""
    axes = describe(desc)
    if desc is None or len(desc) != len(shape) or len(desc) not in (3, 4):
        return Facts(None, axes=axes)
    if _spatial_atoms(desc[0]) or any(_has_role(d, N) for d in desc[1:]) or _vague(desc[0]):
        return Facts(None, axes=axes)
    if len(desc) == 4:
        rows = [i for i in (1, 2, 3) if clean_spatial(desc[i]) is not None and desc[i][0].role == H]
        cols = [i for i in (1, 2, 3) if clean_spatial(desc[i]) is not None and desc[i][0].role == W]
        if len(rows) != 1 or len(cols) != 1:
            return Facts(None, axes=axes)
        (r,), (c,) = rows, cols
        (ch,) = {1, 2, 3} - {r, c}
        row_atom, col_atom = desc[r][0], desc[c][0]
        if _vague(desc[ch]) or any(a.role == CAT for a in desc[ch] if _spatial_atoms((a,))):
            return Facts(None, axes=axes)
        for atom in (row_atom, col_atom):
            if not _leftover_ok(desc, {r, c}, atom.tag, atom.stride):
                return Facts(None, axes=axes)
        grid = (row_atom.size, col_atom.size)
        if (ch, r, c) == (1, 2, 3):
            return Facts("nchw", grid, axes=axes)
        if (r, c, ch) == (1, 2, 3):
            return Facts("nhwc", grid, axes=axes)
        return Facts(None, axes=axes)
    # [N, T, C]: the grid on the token axis (after prefix tokens), channels last
    token_dim, channel_dim = desc[1], desc[2]
    if _spatial_atoms(channel_dim) and not _spatial_atoms(token_dim):
        return Facts(None, axes=axes)  # [N, C, T]: channels first
    if _vague(channel_dim):
        return Facts(None, axes=axes)
    prefix, positions = 0, token_dim
    if len(token_dim) == 1 and token_dim[0].role == CAT:
        segments = token_dim[0].segments
        if any(_spatial_atoms(seg) for _, seg in segments[:-1]):
            return Facts(None, axes=axes)  # grid tokens before others (or split over segments): not supported
        prefix, positions = sum(size for size, _ in segments[:-1]), segments[-1][1]
    if not positions or any(a.role not in SPATIAL for a in positions):
        return Facts(None, axes=axes)
    runs = {role: _grid_run(list(positions), role) for role in SPATIAL}
    if runs[H] is None or runs[W] is None:
        return Facts(None, axes=axes)
    for tag, finest, _ in runs.values():  # type: ignore[misc]
        if not _leftover_ok(desc, {1}, tag, finest):
            return Facts(None, axes=axes)
    grid = (runs[H][2], runs[W][2])  # type: ignore[index]
    merged = _merge(sorted(positions, key=lambda a: (a.role != H, -a.stride)))
    if tuple(positions) == merged and len(merged) == 2:
        return Facts("tokens", grid, prefix, axes=axes)
    return Facts("tokens", grid, prefix, _token_order(positions, runs[H][1], runs[W][1], grid), axes=axes)  # type: ignore[index]


def grid_tags(desc: Desc | None) -> frozenset[int]:
    """Tags of the grid axes a descriptor holds (whole or in pieces)."""
    if desc is None:
        return frozenset()
    return frozenset(a.tag for dim in desc for a in _spatial_atoms(dim))


def ancestors(tags: frozenset[int], lineage: Lineage) -> set[int]:
    """``tags`` and every grid axis they were made from."""
    seen, todo = set(tags), list(tags)
    while todo:
        for parent in lineage.get(todo.pop(), ()):
            if parent not in seen:
                seen.add(parent)
                todo.append(parent)
    return seen


def _token_order(positions: Dim, row_step: int, col_step: int, grid: tuple[int, int]) -> tuple[int, ...]:
    """``order[p]``: the token index that holds grid position ``p`` (row-major), from the atoms' strides."""
    token_of = [0] * (grid[0] * grid[1])
    sizes = [a.size for a in positions]
    for token, digits in enumerate(itertools.product(*(range(s) for s in sizes))):
        row = sum(d * a.stride for d, a in zip(digits, positions) if a.role == H) // row_step
        col = sum(d * a.stride for d, a in zip(digits, positions) if a.role == W) // col_step
        token_of[row * grid[1] + col] = token
    return tuple(token_of)


# ---------------------------------------------------------------- the rules, by aten op name

Rule = Callable[["AxisTracker", tuple, dict, Any], None]
_RULES: dict[str, Rule] = {}


def _rule(*names: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for name in names:
            _RULES[name] = fn
        return fn

    return register


def _norm_dim(dim: int, ndim: int) -> int:
    return dim % ndim if ndim else 0


@_rule("view", "_unsafe_view", "reshape", "_reshape_alias", "view_copy", "unsqueeze", "squeeze", "flatten", "unflatten")
def _r_view(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    t.put(out, None if src is None else reshape(src, out.shape))


@_rule(
    "alias",
    "detach",
    "clone",
    "contiguous",
    "_to_copy",
    "lift_fresh",
    "to",
    "_softmax",
    "_log_softmax",
    "softmax",
    "_safe_softmax",
    # elementwise activations that some builds do not tag pointwise
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "silu",
    "mish",
    "gelu",
    "elu",
    "leaky_relu",
    "relu",
    "relu6",
    "sigmoid",
    "tanh",
    "softplus",
    "log_sigmoid_forward",
)
def _r_same(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    t.put_first(out, t.get(args[0]))


# norms keep every axis (their statistics mix positions or channels, their output positions stay where they were)
_rule(
    "native_layer_norm",
    "native_batch_norm",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training",
    "native_group_norm",
    "_fused_rms_norm",
    "native_dropout",
)(_r_same)


@_rule("permute")
def _r_permute(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    if src is not None:
        src = tuple(src[_norm_dim(d, len(src))] for d in args[1])
    t.put(out, src)


@_rule("transpose", "swapaxes")
def _r_transpose(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    if src is not None:
        a, b = _norm_dim(args[1], len(src)), _norm_dim(args[2], len(src))
        dims = list(src)
        dims[a], dims[b] = dims[b], dims[a]
        src = tuple(dims)
    t.put(out, src)


@_rule("t")
def _r_t(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    t.put(out, None if src is None else tuple(reversed(src)))


@_rule("expand")
def _r_expand(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    if src is None:
        t.put(out, None)
        return
    lead = len(out.shape) - len(src)
    dims = [fresh(BROADCAST, int(s)) for s in out.shape[:lead]]
    for dim, before, after in zip(src, args[0].shape, out.shape[lead:]):
        dims.append(dim if int(before) == int(after) else fresh(BROADCAST, int(after)))
    t.put(out, tuple(dims))


def _slice_dim(dim: Dim, length: int, start: int, end: int, step: int, lineage: Lineage | None = None) -> Dim:
    """An axis after ``[start:end:step]``."""
    if start == 0 and end >= length and step == 1:
        return dim
    count = len(range(start, min(end, length), step))
    if len(dim) == 1 and dim[0].role == CAT and step == 1:
        offset, picked = 0, []
        for size, seg in dim[0].segments:
            if start <= offset and offset + size <= end:
                picked.append((size, seg))
            elif offset < end and start < offset + size:
                return fresh(UNKNOWN, count)  # cuts a segment
            offset += size
        if len(picked) == 1:
            return picked[0][1]
        return (Atom(CAT, count, 1, count, next(_tags), segments=tuple(picked)),) if picked else ()
    atom = clean_spatial(dim)
    if atom is not None and start == 0 and step > 1:  # a strided subsample of a grid axis is a coarser grid
        return fresh(atom.role, count, [atom.tag], lineage)
    if dim and all(a.role == C for a in dim):
        return fresh(C, count)  # some of the channels (q, k, v of one projection)
    return fresh(UNKNOWN, count)


@_rule("slice")
def _r_slice(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    if src is None:
        t.put(out, None)
        return
    ndim = len(src)
    dim = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), ndim)
    length = int(args[0].shape[dim])
    start = args[2] if len(args) > 2 else kwargs.get("start")
    end = args[3] if len(args) > 3 else kwargs.get("end")
    step = args[4] if len(args) > 4 else kwargs.get("step", 1)
    start, end, step = slice(start, end, step).indices(length)
    dims = list(src)
    dims[dim] = _slice_dim(src[dim], length, start, end, step, t.lineage)
    t.put(out, tuple(dims))


@_rule("narrow")
def _r_narrow(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    if src is None:
        t.put(out, None)
        return
    dim = _norm_dim(args[1], len(src))
    length = int(args[0].shape[dim])
    start = int(args[2]) % length if length else 0
    dims = list(src)
    dims[dim] = _slice_dim(src[dim], length, start, start + int(args[3]), 1, t.lineage)
    t.put(out, tuple(dims))


@_rule("select")
def _r_select(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    if src is None:
        t.put(out, None)
        return
    dim = _norm_dim(args[1], len(src))
    t.put(out, src[:dim] + src[dim + 1 :])


@_rule("unbind")
def _r_unbind(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    dim = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), args[0].dim())
    for piece in out:
        t.put(piece, None if src is None else src[:dim] + src[dim + 1 :])


@_rule("split", "split_with_sizes", "chunk", "unsafe_split", "unsafe_split_with_sizes", "tensor_split")
def _r_split(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    pieces = list(out)
    if src is None:
        for piece in pieces:
            t.put(piece, None)
        return
    dim = _norm_dim(args[2] if len(args) > 2 else kwargs.get("dim", 0), len(src))
    length, offset = int(args[0].shape[dim]), 0
    for piece in pieces:
        size = int(piece.shape[dim])
        dims = list(src)
        dims[dim] = _slice_dim(src[dim], length, offset, offset + size, 1, t.lineage)
        offset += size
        t.put(piece, tuple(dims))


@_rule("cat", "concat")
def _r_cat(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    tensors = [x for x in args[0] if isinstance(x, Tensor) and x.dim() == out.dim()]
    descs = [t.get(x) for x in tensors]
    if all(d is None for d in descs):
        t.put(out, None)
        return
    dim = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), out.dim())
    dims: list[Dim] = []
    for i in range(out.dim()):
        if i == dim:
            segments = tuple(
                (int(x.shape[i]), d[i] if d is not None else fresh(C, int(x.shape[i])))  # constants: features
                for x, d in zip(tensors, descs)
                if int(x.shape[i]) > 0
            )
            size = int(out.shape[i])
            if len(segments) == 1:
                dims.append(segments[0][1])
            elif all(_features(seg) for _, seg in segments):
                dims.append(fresh(C, size))  # channels concatenated (DenseNet, Inception, ShuffleNet) are channels
            else:
                dims.append((Atom(CAT, size, 1, size, next(_tags), segments=segments),))
        else:
            dims.append(join([d[i] if d is not None else None for d in descs], int(out.shape[i]), t.lineage))
    t.put(out, tuple(dims))


@_rule("stack")
def _r_stack(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    descs = [t.get(x) for x in args[0]]
    if all(d is None for d in descs):
        t.put(out, None)
        return
    dim = _norm_dim(args[1] if len(args) > 1 else kwargs.get("dim", 0), out.dim())
    rest = [join([d[i] if d is not None else None for d in descs], int(s)) for i, s in enumerate(args[0][0].shape)]
    rest.insert(dim, fresh(UNKNOWN, int(out.shape[dim])))
    t.put(out, tuple(rest))


def _gridwise(t: AxisTracker, src: Desc | None, out: Tensor, keep_channels: bool) -> Desc | None:
    """A convolution, pooling or resize: batch kept, each spatial axis that held a clean grid axis holds a fresh grid
    axis of its output size (anything else there is unknown), channels fresh (convolution) or kept."""
    if src is None:
        return None
    shape = [int(s) for s in out.shape]
    batch = src[0] if len(src) == len(shape) and _size(src[0]) == shape[0] else fresh(UNKNOWN, shape[0])
    channels = src[1] if keep_channels and _size(src[1]) == shape[1] else fresh(C, shape[1])
    dims: list[Dim] = [batch, channels]
    for i in range(2, len(shape)):
        atom = clean_spatial(src[i], padded=True) if i < len(src) else None
        if atom is not None and atom.size == shape[i]:
            dims.append((atom,))  # a stride-1, same-size convolution keeps the grid
        else:
            made = fresh(atom.role, shape[i], [atom.tag], t.lineage) if atom is not None else fresh(UNKNOWN, shape[i])
            dims.append(made)
    return tuple(dims)


@_rule("convolution", "_convolution", "convolution_overrideable", "mkldnn_convolution", "conv2d", "conv1d", "conv3d")
def _r_conv(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    t.put(out, _gridwise(t, t.get(args[0]), out, keep_channels=False))


@_rule(
    "max_pool2d_with_indices",
    "max_pool2d",
    "avg_pool2d",
    "_adaptive_avg_pool2d",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "upsample_bilinear2d",
    "upsample_nearest2d",
    "upsample_bicubic2d",
    "_upsample_bilinear2d_aa",
    "_upsample_nearest_exact2d",
    "max_pool1d",
    "avg_pool1d",
    "lp_pool2d",
    "pixel_shuffle",
    "pixel_unshuffle",
)
def _r_pool(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    first = out[0] if isinstance(out, (tuple, list)) else out
    name = t.current
    keep = name not in ("pixel_shuffle", "pixel_unshuffle")
    t.put_first(out, _gridwise(t, t.get(args[0]), first, keep_channels=keep))


@_rule(
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "var",
    "std",
    "var_mean",
    "std_mean",
    "logsumexp",
    "prod",
    "argmax",
    "argmin",
    "linalg_vector_norm",
    "norm",
    "all",
    "any",
)
def _r_reduce(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    first = out[0] if isinstance(out, (tuple, list)) else out
    if src is None or not isinstance(first, Tensor):
        t.put_first(out, None)
        return
    ndim = len(src)
    dims = args[1] if len(args) > 1 and not isinstance(args[1], bool) else kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    if t.current == "linalg_vector_norm" and len(args) > 2:
        dims = args[2]
    if dims is None or (isinstance(dims, (list, tuple)) and not dims and first.dim() == 0):
        t.put_first(out, ())
        return
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        t.put_first(out, unknown(first.shape))
        return
    reduced = {_norm_dim(d, ndim) for d in dims}
    # a grid axis pooled to one position stays a (one-position) grid axis: [N, C, 1, 1] after a global mean
    kept = [_pooled(src[i]) if i in reduced else src[i] for i in range(ndim)]
    if first.dim() < ndim:
        kept = [src[i] for i in range(ndim) if i not in reduced]
    t.put_first(out, tuple(kept) if len(kept) == first.dim() else unknown(first.shape))


def _broadcast_query(q: Desc, k: Desc | None) -> bool:
    """Queries copied over the windows or images that the keys come from (GC-ViT's global queries): their rows are
    the same for every window, so they do not say which position of a window an output row is."""
    return k is not None and any(_has_role(d, BROADCAST) for d in q[:-2]) and not any(_vague(d) for d in k[:-2])


def _pooled(dim: Dim) -> Dim:
    atom = clean_spatial(dim)
    return fresh(atom.role, 1) if atom is not None else ()


def _matmul_desc(a: Desc | None, b: Desc | None, out: Tensor) -> Desc | None:
    """``[..., n, k] @ [..., k, m]``: rows from ``a``, columns from ``b`` (fresh features from a weight), batch axes
    joined."""
    if a is None and b is None:
        return None
    shape = [int(s) for s in out.shape]
    rows = a[-2] if a is not None and not _broadcast_query(a, b) else fresh(UNKNOWN, shape[-2])
    # a weight makes features, unless it mixes positions (a token-mixing MLP): then the new axis is nothing known
    cols = b[-1] if b is not None else fresh(C if a is None or _features(a[-1]) else UNKNOWN, shape[-1])
    lead = [
        join([a[i] if a is not None else None, b[i] if b is not None else None], shape[i])
        for i in range(len(shape) - 2)
    ]
    return (*lead, rows, cols)


@_rule("mm", "bmm", "matmul")
def _r_mm(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    t.put(out, _matmul_desc(t.get(args[0]), t.get(args[1]), out))


@_rule("addmm", "baddbmm", "addbmm")
def _r_addmm(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    desc = _matmul_desc(t.get(args[1]), t.get(args[2]), out)
    if desc is not None and t.get(args[0]) is not None and isinstance(args[0], Tensor):
        bias = t.get(args[0])
        desc = _broadcast_join([desc, bias], [out, args[0]], out)
    t.put(out, desc)


@_rule("linear")
def _r_linear(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    if src is not None:
        src = (*src[:-1], fresh(C if _features(src[-1]) else UNKNOWN, int(out.shape[-1])))
    t.put(out, src)


@_rule(
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
    "scaled_dot_product_attention",
)
def _r_sdpa(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    first = out[0] if isinstance(out, (tuple, list)) else out
    q, v = t.get(args[0]), t.get(args[2])
    if q is None and v is None:
        t.put_first(out, None)
        return
    k = t.get(args[1])
    rows = q[:-1] if q is not None and not _broadcast_query(q, k) else unknown(first.shape[:-1])
    cols = v[-1] if v is not None else fresh(C, int(first.shape[-1]))
    t.put_first(out, (*rows, cols))
    if isinstance(out, (tuple, list)):
        for extra in out[1:]:
            if isinstance(extra, Tensor):
                t.put(extra, unknown(extra.shape))


@_rule("_native_multi_head_attention")
def _r_mha(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    first = out[0] if isinstance(out, (tuple, list)) else out
    q = t.get(args[0])
    t.put_first(out, None if q is None else (*q[:-1], fresh(C, int(first.shape[-1]))))


@_rule("constant_pad_nd", "reflection_pad2d", "replication_pad2d", "reflection_pad1d", "replication_pad1d")
def _r_pad(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    if src is None:
        t.put(out, None)
        return
    pads = list(args[1])
    dims = list(src)
    for k in range(len(pads) // 2):
        i = len(src) - 1 - k
        left, right = int(pads[2 * k]), int(pads[2 * k + 1])
        if (left, right) == (0, 0):
            continue
        size = int(out.shape[i])
        if left < 0 or right < 0:
            dims[i] = fresh(UNKNOWN, size)
            continue
        segments = tuple(
            (n, d)
            for n, d in ((left, fresh(UNKNOWN, left)), (int(args[0].shape[i]), src[i]), (right, fresh(UNKNOWN, right)))
            if n
        )
        dims[i] = (Atom(CAT, size, 1, size, next(_tags), segments=segments),)
    t.put(out, tuple(dims))


@_rule("roll")
def _r_roll(t: AxisTracker, args: tuple, kwargs: dict, out: Any) -> None:
    src = t.get(args[0])
    if src is None:
        t.put(out, None)
        return
    shifts = args[1] if len(args) > 1 else kwargs.get("shifts", ())
    axes = args[2] if len(args) > 2 else kwargs.get("dims", ())
    shifts = [shifts] if isinstance(shifts, int) else list(shifts)
    axes = [axes] if isinstance(axes, int) else list(axes)
    if not axes or len(axes) != len(shifts):
        t.put(out, unknown(out.shape))
        return
    dims = list(src)
    for shift, axis in zip(shifts, axes):
        i = _norm_dim(axis, len(src))
        dim = _merge(dims[i])
        if len(dim) == 1 and dim[0].role in SPATIAL and dim[0].top:
            dims[i] = (replace(dim[0], shift=(dim[0].shift + int(shift)) % dim[0].size),)
        elif all(a.role == C for a in dim):
            dims[i] = fresh(C, _size(dim))
        else:
            dims[i] = fresh(UNKNOWN, _size(dim))
    t.put(out, tuple(dims))


# creations: no descriptor (they do not depend on the input's values)
_CREATIONS = {
    "zeros",
    "ones",
    "full",
    "empty",
    "empty_like",
    "zeros_like",
    "ones_like",
    "full_like",
    "new_zeros",
    "new_ones",
    "new_full",
    "new_empty",
    "new_empty_strided",
    "empty_strided",
    "arange",
    "linspace",
    "scalar_tensor",
    "rand_like",
    "randn_like",
    "bernoulli",
    "_local_scalar_dense",
    "eye",
    "sym_size",
    "sym_stride",
    "sym_numel",
    "is_same_size",
    "_has_compatible_shallow_copy_type",
    "equal",
}


def _broadcast_join(
    descs: Sequence[Desc | None], tensors: Sequence[Tensor], out: Tensor, lineage: Lineage | None = None
) -> Desc | None:
    if all(d is None for d in descs):
        return None
    shape = [int(s) for s in out.shape]
    dims: list[Dim] = []
    for j, size in enumerate(shape):
        candidates: list[Dim | None] = []
        for desc, tensor in zip(descs, tensors):
            if desc is None:
                continue
            k = j - (len(shape) - len(desc))
            if k >= 0 and int(tensor.shape[k]) == size:
                candidates.append(desc[k])
        dims.append(join(candidates, size, lineage))
    return tuple(dims)


class AxisTracker(TorchDispatchMode):
    """Labels every tensor computed from the input with its axes' descriptor while active (see the module doc).

    Tensors are looked up by ``id`` while the trace keeps them alive (:attr:`alive`); ops without a rule that read a
    labelled tensor are listed in :attr:`unknown_ops` and label their outputs unknown.
    """

    def __init__(self) -> None:
        super().__init__()
        self.descs: dict[int, Desc | None] = {}
        self.alive: list[Tensor] = []
        self.unknown_ops: set[str] = set()
        self.lineage: Lineage = {}
        self.current = ""

    def start(self, x: Tensor) -> None:
        self.put(x, image_desc(x.shape))

    def get(self, x: object) -> Desc | None:
        if not isinstance(x, Tensor):
            return None
        desc = self.descs.get(id(x))
        if desc is not None and len(desc) != x.dim():
            return unknown(x.shape)
        return desc

    def put(self, x: object, desc: Desc | None) -> None:
        if not isinstance(x, Tensor):
            return
        if desc is not None and (len(desc) != x.dim() or any(_size(d) != int(s) for d, s in zip(desc, x.shape))):
            desc = unknown(x.shape)
        self.alive.append(x)
        self.descs[id(x)] = desc

    def put_first(self, out: object, desc: Desc | None) -> None:
        if isinstance(out, (tuple, list)):
            self.put(out[0], desc)
            for extra in out[1:]:
                if isinstance(extra, Tensor) and id(extra) not in self.descs:
                    self.put(extra, None if desc is None else unknown(extra.shape))
        else:
            self.put(out, desc)

    def tracked(self, args: Any) -> list[Tensor]:
        found: list[Tensor] = []
        for a in args:
            if isinstance(a, Tensor) and self.descs.get(id(a)) is not None:
                found.append(a)
            elif isinstance(a, (list, tuple)):
                found += self.tracked(a)
        return found

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        base = name[:-1] if name.endswith("_") and not name.endswith("__") else name  # in-place variants
        self.current = base
        try:
            self._label(func, base, args, kwargs, out)
        except Exception:  # a rule that cannot read these arguments: the output is unknown, never guessed
            self.unknown_ops.add(name)
            for piece in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(piece, Tensor):
                    self.put(piece, unknown(piece.shape) if self.tracked(args) else None)
        return out

    def _label(self, func: Any, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        inplace = name != func.overloadpacket.__name__ and isinstance(out, Tensor) and args and out is args[0]
        if name in _CREATIONS:
            for piece in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(piece, Tensor) and not (inplace and id(piece) in self.descs):
                    self.put(piece, None)
            return
        if name == "copy":  # dst.copy_(src): dst now holds src's values
            dst, src = args[0], args[1]
            same = tuple(dst.shape) == tuple(src.shape)
            self._overwrite(dst, t_desc if (t_desc := self.get(src)) is not None and same else None, src)
            return
        if name in ("fill", "zero") and inplace:
            return
        rule = _RULES.get(name)
        if rule is None and torch.Tag.pointwise in func.tags:
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor) and a.dim()]
            first = out[0] if isinstance(out, (tuple, list)) else out
            desc = _broadcast_join([self.get(a) for a in tensors], tensors, first, self.lineage)
            if inplace:
                self._overwrite(out, desc, None)
            else:
                self.put_first(out, desc)
            return
        if rule is None:
            if self.tracked(list(args) + list(kwargs.values())):
                self.unknown_ops.add(name)
                for piece in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(piece, Tensor):
                        self._overwrite(piece, unknown(piece.shape), None) if inplace else self.put(
                            piece, unknown(piece.shape)
                        )
            else:
                for piece in out if isinstance(out, (tuple, list)) else (out,):
                    if isinstance(piece, Tensor) and id(piece) not in self.descs:
                        self.put(piece, None)
            return
        rule(self, args, kwargs, out)

    def _overwrite(self, dst: Tensor, desc: Desc | None, src: Tensor | None) -> None:
        """An in-place write: ``dst`` gets ``desc``; a view's base it wrote into no longer has its old axes."""
        before = self.descs.get(id(dst))
        if desc is None and src is not None and self.descs.get(id(src)) is not None:
            desc = unknown(dst.shape)
        if before is None and desc is None:
            return
        self.put(dst, desc)
        base = dst._base
        if base is not None and desc != before:
            self.put(base, unknown(base.shape))
