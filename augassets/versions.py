"""Asset code versions that also cover the profile settings each asset depends on, so changing a
profile's numbers marks exactly the affected assets as changed (in the UI and for the CLI's cache)."""

from __future__ import annotations

import hashlib


def code_version(revision: str, *settings: object) -> str:
    digest = hashlib.sha256(repr(settings).encode()).hexdigest()[:10]
    return f"{revision}-{digest}"
