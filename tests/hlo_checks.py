"""Find batched LAPACK calls in compiled-program text (StableHLO from ``lower().as_text()`` or HLO
dumped by ``XLA_FLAGS=--xla_dump_to``): the calls that jaxlib may split over its thread pool."""

from __future__ import annotations

import re


def lapack_calls(text: str) -> list[tuple[str, int]]:
    """(target, largest operand rank) of each LAPACK custom call in ``text``."""
    calls = []
    for line in text.splitlines():
        target = re.search(r"(lapack_\w+)", line)
        if target is None or "custom" not in line:
            continue
        ranks = [s.count("x") for s in re.findall(r"tensor<((?:\d+x)+)f(?:32|64)>", line)]
        ranks += [s.count(",") + 1 if s else 0 for s in re.findall(r"f(?:32|64)\[([\d,]*)\]", line)]
        calls.append((target.group(1), max(ranks, default=0)))
    return calls


def batched_lapack_calls(text: str) -> list[tuple[str, int]]:
    """The LAPACK calls whose operands carry a batch axis (rank above 2)."""
    return [(name, rank) for name, rank in lapack_calls(text) if rank > 2]
