"""Several device buffers of one call carved out of a single allocation.

One torch.empty instead of one per buffer: each allocation through torch's CUDA caching allocator costs a few us of
host time, and the eager path (eager.py) needs only the buffers' addresses, not tensor views of them.
"""
from __future__ import annotations

from collections.abc import Sequence

# The kernels read 16-byte vectors and bulk-copy (cp.async.bulk, 16-byte aligned) whole tiles; 128 puts every
# buffer on its own cache line. torch's CUDA allocator returns blocks aligned to at least 512 bytes.
ALIGN = 128


def carve(sizes: Sequence[int], align: int = ALIGN) -> tuple[tuple[int, ...], int]:
    """Byte offsets of consecutive buffers of ``sizes`` bytes, each a multiple of ``align``, and the total size."""
    if align <= 0 or align & (align - 1):
        raise ValueError(f"align must be a power of two, got {align}")
    offsets, end = [], 0
    for size in sizes:
        if size < 0:
            raise ValueError(f"buffer sizes must be >= 0, got {size}")
        start = -(-end // align) * align
        offsets.append(start)
        end = start + size
    return tuple(offsets), -(-end // align) * align
