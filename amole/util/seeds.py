"""Seeds derived from names, identical across processes and machines (unlike Python's salted ``hash``)."""

from __future__ import annotations

import hashlib


def stable_seed(*parts: object) -> int:
    """A 31-bit seed fixed by ``parts``: lets a resumed run replay exactly what an unbroken one does."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**31 - 1)
