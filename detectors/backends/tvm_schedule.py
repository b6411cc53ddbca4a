"""A cheap default CPU schedule for TVM Relax modules: parallel outer loops, vectorised inner loops.

TVM's CPU pipeline leaves operators as naive serial loops unless MetaSchedule tunes them. This pass
gives every block a simple schedule that needs no search: spatial loops outermost and fused and
run in parallel; for reductions (convolutions, matmuls) the innermost output loop is split
into vectors that accumulate inside the reduction loops. Blocks it cannot handle keep
their loops; the pass never changes results.
"""

from __future__ import annotations

import logging

import tvm
from tvm import s_tir

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


@tvm.transform.module_pass(opt_level=0, name="PedstreamDefaultCpuSchedule")
def default_cpu_schedule(mod: tvm.IRModule, _ctx: object) -> tvm.IRModule:
    """Schedule every not-yet-scheduled PrimFunc of ``mod`` (see the module docstring)."""
    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs and func.attrs.get("tir.is_scheduled"):
            continue
        sch = s_tir.Schedule(func)
        for block in sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []:
            try:
                _schedule_block(sch, block)
            except Exception as exc:  # a block this rule cannot handle stays as it was
                log.debug("%s: default schedule skipped a block: %s", gv.name_hint, exc)
        updates[gv] = sch.mod["main"].with_attr("tir.is_scheduled", True)
    for gv, func in updates.items():
        mod[gv] = func
    return mod


def _has_root(sch: s_tir.Schedule) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:
        return False
