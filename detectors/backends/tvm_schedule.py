"""Cheap CPU schedules for TVM Relax modules, no search needed.

TVM's CPU pipeline leaves operators as naive serial loops unless MetaSchedule tunes them. Two
rule-based schedules, both exact (they never change results):

* ``loops-v1``: every block's spatial loops outermost, fused and run in parallel; for reductions
  the innermost output loop is split into vectors that accumulate inside the reduction loops.
* ``blocked-v4`` (the default): for a function with one reduction (a convolution or matmul with
  its fused epilogue), the elementwise steps around it are inlined, zero padding included (the
  convolution reads its input under the bounds condition instead of a padded copy: for a stride-2
  depthwise layer the copy cost more than the arithmetic), and the reduction is register-blocked:
  an output tile of a few pixels by 16 channels accumulates over the whole reduction in registers,
  then the epilogue (bias, ReLU6, residual add) is applied to the tile while it is in cache. Tiles
  run in parallel over TVM's thread pool. In channels-last layouts the channel loop is the
  contiguous one, so this is what vectorises well. The tile follows the target's vector registers:
  with 16 (AVX2) 4 pixels x 16 channels (8 registers) and depthwise convolutions (reductions of
  fewer than 16 terms) not blocked over pixels; with 32 (AVX-512) 8 pixels, depthwise included
  (each measured faster on its kind of CPU, and slower on the other). Anything the rule cannot
  handle gets ``loops-v1``. ``blocked-serial-v4`` keeps the tiles on one core.
* ``blocked-v3``: the previous default, as ``blocked-v4`` with padding as a separate pass over
  memory and the AVX2 tile everywhere.
  (``blocked-v2``, an earlier version, accumulated in a "local" tile buffer: inside a parallel
  loop TVM allocates that from its workspace pool once per tile, which made the parallel version
  2x slower per core than the serial one.)
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import tvm
from tvm import s_tir
from tvm.target import codegen

log = logging.getLogger(__name__)

VECTOR_LANES = 16
_SPATIAL, _REDUCE = 0, 2


def _schedule_block(sch: s_tir.Schedule, block: object) -> None:
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    kinds = [int(iv.iter_type) for iv in stmt.iter_vars]
    if len(loops) != len(kinds) or not loops:
        return
    spatial = [lp for lp, k in zip(loops, kinds, strict=False) if k == _SPATIAL]
    reduce = [lp for lp, k in zip(loops, kinds, strict=False) if k == _REDUCE]
    if len(spatial) + len(reduce) != len(loops) or not spatial:
        return
    if reduce:
        if len(spatial) >= 2:
            sch.reorder(*spatial[:-1], *reduce, spatial[-1])  # innermost output loop inside the reduction
        outer = spatial[:-1] if len(spatial) >= 2 else spatial
    else:
        outer = spatial[:-1] if len(spatial) >= 2 else spatial
    inner = spatial[-1]
    extent = sch.get(inner).extent
    if isinstance(extent, tvm.tirx.IntImm) and outer is not spatial:
        lanes = next((n for n in (VECTOR_LANES, 8, 4) if extent.value % n == 0), 0)
        if lanes and extent.value > lanes:
            row_loop, vector_loop = sch.split(inner, factors=[None, lanes])
            if reduce:  # accumulate one vector of outputs over the whole reduction
                sch.reorder(row_loop, *reduce, vector_loop)
            sch.vectorize(vector_loop)
        elif lanes:
            sch.vectorize(inner)
    fused = sch.fuse(*outer[:2]) if len(outer) >= 2 else outer[0]
    sch.parallel(fused)


@dataclass(frozen=True)
class Rule:
    """What a named schedule does (see the module doc)."""

    blocked: bool  # register-block reductions (else loops-v1 only)
    parallel: bool  # tiles over the thread pool
    inline_padding: bool  # convolutions read their input under the bounds condition, no padded copy
    wide_tiles: bool  # on targets with 32 vector registers: 8-pixel tiles, depthwise blocked too


RULES = {
    "loops-v1": Rule(blocked=False, parallel=True, inline_padding=False, wide_tiles=False),
    "blocked-v3": Rule(blocked=True, parallel=True, inline_padding=False, wide_tiles=False),
    "blocked-v4": Rule(blocked=True, parallel=True, inline_padding=True, wide_tiles=True),
    "blocked-serial-v4": Rule(blocked=True, parallel=False, inline_padding=True, wide_tiles=True),
}
SCHEDULES = tuple(RULES)
DEFAULT_SCHEDULE = "blocked-v4"


@dataclass(frozen=True)
class RegisterTile:
    rows: tuple[int, ...]  # pixels per tile, the first that divides the row is used
    min_blocked_reduction: int  # reductions with fewer terms (depthwise 3x3 = 9) get one pixel per tile


NARROW_TILE = RegisterTile(rows=(4, 5, 6, 3, 2), min_blocked_reduction=16)  # 4 x 16 lanes = 8 of AVX2's 16 registers
WIDE_TILE = RegisterTile(rows=(8, 4, 6, 5, 3, 2), min_blocked_reduction=4)  # 8 of AVX-512's 32 registers


def register_tile(rule: Rule, target: tvm.target.Target | None) -> RegisterTile:
    """The tile for ``target``'s vector registers (the current target when None is given)."""
    target = target or tvm.target.Target.current(allow_none=True)
    if not rule.wide_tiles or target is None or target.kind.name != "llvm":
        return NARROW_TILE
    try:
        wide = bool(codegen.target_has_features("avx512f", target))
    except Exception:  # a target LLVM cannot describe: the safe tile
        wide = False
    return WIDE_TILE if wide else NARROW_TILE


def _iter_kinds(sch: s_tir.Schedule, block: object) -> list[int]:
    return [int(iv.iter_type) for iv in sch.get(block).iter_vars]


def _first_divisor(extent: int, options: tuple[int, ...]) -> int:
    return next((n for n in options if extent % n == 0), 1)


def _block_reduction(sch: s_tir.Schedule, block: object, parallel: bool, tile_shape: RegisterTile) -> None:
    """Register-block one reduction and apply its epilogue to each tile right after it (see module doc)."""
    loops = sch.get_loops(block)
    kinds = _iter_kinds(sch, block)
    spatial = [lp for lp, k in zip(loops, kinds, strict=False) if k == _SPATIAL]
    reduce = [lp for lp, k in zip(loops, kinds, strict=False) if k == _REDUCE]
    if len(loops) != len(kinds) or len(spatial) < 2 or not reduce or len(spatial) + len(reduce) != len(loops):
        raise ValueError("not a plain reduction")
    extents = [int(sch.get(lp).extent) for lp in spatial]
    lanes = _first_divisor(extents[-1], (VECTOR_LANES, 8, 4))
    if lanes < 4:
        raise ValueError("innermost output loop does not split into vectors")
    terms = 1
    for lp in reduce:
        terms *= int(sch.get(lp).extent)
    rows = _first_divisor(extents[-2], tile_shape.rows) if terms >= tile_shape.min_blocked_reduction else 1
    channel_outer, channel_inner = sch.split(spatial[-1], factors=[None, lanes])
    row_outer, row_inner = sch.split(spatial[-2], factors=[None, rows])
    sch.reorder(*spatial[:-2], row_outer, channel_outer, *reduce, row_inner, channel_inner)
    tile = sch.fuse(*spatial[:-2], row_outer, channel_outer)  # one loop over output tiles
    # No cache_write to a "local" tile buffer: inside a parallel loop TVM allocates such a buffer from
    # its workspace pool once per iteration (per tile), which cost more than the arithmetic. LLVM keeps
    # the unrolled tile's accumulators in registers anyway (the buffers are noalias).
    for consumer in sch.get_consumers(block):  # the (already inlined) epilogue, on the tile while it is in cache
        sch.reverse_compute_at(consumer, tile)
        _vectorize_tile(sch, consumer)
    if parallel:
        sch.parallel(tile)
    sch.unroll(row_inner)
    sch.vectorize(channel_inner)
    _vectorize_tile(sch, sch.decompose_reduction(block, reduce[0]))


def _vectorize_tile(sch: s_tir.Schedule, block: object) -> None:
    """Vectorise the innermost loop of a block under the tile loop, and unroll the one above it."""
    loops = sch.get_loops(block)[1:]
    if loops:
        sch.vectorize(loops[-1])
    if len(loops) >= 2:
        sch.unroll(loops[-2])


def _blocked(
    func: tvm.tirx.PrimFunc, rule: Rule = RULES[DEFAULT_SCHEDULE], target: tvm.target.Target | None = None
) -> tvm.tirx.PrimFunc | None:
    """``func`` with its one reduction register-blocked, or None where the rule does not apply."""
    sch = s_tir.Schedule(func)
    if not _has_root(sch):
        return None
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    reductions = [b for b in blocks if _REDUCE in _iter_kinds(sch, b)]
    if len(reductions) != 1:
        return None
    for block in blocks:
        stmt = sch.get(block)
        if _REDUCE in _iter_kinds(sch, block) or ("if_then_else" in str(stmt.body) and not rule.inline_padding):
            continue  # blocked-v3: padding stays a separate pass over memory
        with contextlib.suppress(Exception):  # output blocks and non-elementwise ones cannot be inlined
            sch.compute_inline(block)
    try:
        _block_reduction(sch, reductions[0], rule.parallel, register_tile(rule, target))
    except Exception as exc:  # this rule cannot handle it: loops-v1 will
        log.debug("blocked schedule does not apply: %s", exc)
        return None
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        if _REDUCE not in _iter_kinds(sch, block) and sch.get_loops(block):
            with contextlib.suppress(Exception):
                _schedule_block(sch, block)
    return sch.mod["main"]


def _loops(func: tvm.tirx.PrimFunc, name: str) -> tvm.tirx.PrimFunc:
    sch = s_tir.Schedule(func)
    for block in sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []:
        try:
            _schedule_block(sch, block)
        except Exception as exc:  # a block this rule cannot handle stays as it was
            log.debug("%s: default schedule skipped a block: %s", name, exc)
    return sch.mod["main"]


def cpu_schedule(schedule: str = DEFAULT_SCHEDULE, target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """A module pass scheduling every not-yet-scheduled PrimFunc with ``schedule`` (see the module
    doc) for ``target`` (default: the target in scope when the pass runs)."""
    if schedule not in RULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    rule = RULES[schedule]

    @tvm.transform.module_pass(opt_level=0, name="PedstreamCpuSchedule")
    def run(mod: tvm.IRModule, _ctx: object) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions.items():
            if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs and func.attrs.get("tir.is_scheduled"):
                continue
            scheduled = _blocked(func, rule, target) if rule.blocked else None
            updates[gv] = (scheduled or _loops(func, gv.name_hint)).with_attr("tir.is_scheduled", True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return run


def _has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:
        return False
