"""Control characters in the values of the text formats (CEF, LEEF, syslog): each becomes U+FFFD.

Receivers mangle them (rsyslog writes NUL as `#000`, ArcSight and QRadar parsers stop at NUL) and
log viewers act on them (ESC, BEL, backspace, the C1 CSI U+009B). TAB, CR and LF are not touched
here: each format has its own rule for them. One character becomes one character, so a value cut
to its length before this step keeps that length.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"

# C0 but TAB (U+0009), LF (U+000A) and CR (U+000D); DEL; C1 (U+0080-U+009F, NEL included).
CONTROLS = "".join(
    chr(code) for code in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(code) not in "\t\n\r"
)
_TABLE = str.maketrans(dict.fromkeys(CONTROLS, REPLACEMENT))
_ANY_CONTROL = re.compile(f"[{re.escape(CONTROLS)}]")


def replace_controls(value: str) -> str:
    """`value` with each control character other than TAB, CR and LF replaced by U+FFFD."""
    # Almost no value has one. isprintable() is the cheapest proof of that for ordinary text;
    # text it refuses (a newline, a tab, a no-break space) gets the regex scan, and translate(),
    # which is slow on non-ASCII text, runs only when there is something to replace.
    if value.isprintable() or _ANY_CONTROL.search(value) is None:
        return value
    return value.translate(_TABLE)
