"""Bounded echoes of client-supplied strings (encodings, frame ids, action spaces) in replies and logs."""

from __future__ import annotations

DEFAULT_ECHO_CHARS = 64
"""Longest client string echoed verbatim; longer ones are cut and their length is given instead."""


def clip_text(text: object, limit: int = DEFAULT_ECHO_CHARS) -> str:
    """``text`` as a string of at most ``limit`` characters plus a note of how long it really was."""
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}... ({len(s)} chars)"


def short_repr(text: object, limit: int = DEFAULT_ECHO_CHARS) -> str:
    """``repr`` of a client string, cut to ``limit`` characters first (never the repr of a 1 MB string)."""
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return repr(s)
    return f"{s[:limit]!r}... ({len(s)} chars)"
