"""Client and session ids: RFC 4122 version 4 UUID strings from a pooled CSPRNG buffer.

`str(uuid.uuid4())` costs a getrandom call and a UUID object per id, two per connect;
here one os.urandom call and one hex conversion make `BATCH` ids, which are then handed
out one by one. They are exactly as unpredictable (the bytes come from the same source)
and keep the uuid4 format: version nibble 4, variant bits 10.

A forked worker must not hand out ids its parent (or a sibling) already holds in its
pool: the pool is emptied in the child at fork.
"""

from __future__ import annotations

import os

BATCH = 256                       # ids made per refill (16 random bytes each)
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}   # hex digit -> 10xx

_pool: list[str] = []


def _refill() -> None:
    """BATCH ids at once: 8-4-4-4-12 hex digits, version digit 4, variant digit 8, 9, a or b."""
    hexes = os.urandom(16 * BATCH).hex()
    variant = _VARIANT
    _pool.extend([f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{variant[h[16]]}{h[17:20]}-{h[20:32]}"
                  for h in [hexes[i:i + 32] for i in range(0, 32 * BATCH, 32)]])


def new_id() -> str:
    """A fresh random uuid4 string, like str(uuid.uuid4())."""
    try:
        return _pool.pop()
    except IndexError:
        _refill()
        return _pool.pop()


os.register_at_fork(after_in_child=_pool.clear)
