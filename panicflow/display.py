"""Text from a store or a config, made safe to print on a terminal.

A name, an error or a path read from a store may hold terminal escapes (ESC sequences that
recolour, retitle or clear the terminal), BEL, carriage returns or bidi overrides: old stores
may already hold them, whatever the config validation now refuses. ``printable`` writes each
such character as its Python escape (``\\x1b``, ``\\u202e``), ``shown`` also escapes Rich markup.
"""

from __future__ import annotations

import unicodedata

# controls (C0, DEL, C1), format characters (bidi overrides, zero-width), line and paragraph separators, surrogates
CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def is_control(ch: str) -> bool:
    return unicodedata.category(ch) in CONTROL_CATEGORIES


def printable(text: object) -> str:
    """``str(text)`` with every control character written as its escape, on one line."""
    text = str(text)
    if text.isprintable():  # the common case, and fast
        return text
    return "".join(ch.encode("unicode_escape", "backslashreplace").decode("ascii") if is_control(ch) else ch for ch in text)


def shown(text: object) -> str:
    """``printable(text)`` with Rich markup escaped: for ``Console.print`` and table cells."""
    from rich.markup import escape

    return escape(printable(text))
