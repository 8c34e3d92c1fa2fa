"""Characters the text formats (CEF, LEEF, syslog) never write raw: each becomes U+FFFD.

Control characters: receivers mangle them (rsyslog writes NUL as `#000`, ArcSight and QRadar
parsers stop at NUL) and log viewers act on them (ESC, BEL, backspace, the C1 CSI U+009B).
Unicode line breaks: NEL (U+0085), LINE SEPARATOR (U+2028) and PARAGRAPH SEPARATOR (U+2029) end a
line for many line readers (JavaScript, Java's and .NET's regex `$`, Python's `splitlines`), so a
value could start a forged line in a viewer even though the record has no CR or LF.
Bidirectional controls: the embeddings and overrides U+202A-U+202E and the isolates U+2066-U+2069
reorder what an analyst sees ("Zoë \\u202eevil\\u202c" shows as "Zoë live"), the trick of
CVE-2021-42574. TAB, CR and LF are not touched here: each format has its own rule for them.
One character becomes one character, so a value cut to its length before this step keeps it.

JSON keeps the text as it is, but JSON inside a syslog message is still a line: `json_escape`
writes those characters as JSON escapes, which decode to the same text.
"""

from __future__ import annotations

import re

REPLACEMENT = "\ufffd"

# C0 but TAB (U+0009), LF (U+000A) and CR (U+000D); DEL; C1 (U+0080-U+009F, NEL included).
CONTROLS = "".join(
    chr(code) for code in (*range(0x00, 0x20), *range(0x7F, 0xA0)) if chr(code) not in "\t\n\r"
)
# U+0085 NEL is in CONTROLS already (C1).
LINE_SEPARATORS = "\u2028\u2029"
BIDI_CONTROLS = "".join(chr(code) for code in (*range(0x202A, 0x202F), *range(0x2066, 0x206A)))
REPLACED = CONTROLS + LINE_SEPARATORS + BIDI_CONTROLS

_TABLE = str.maketrans(dict.fromkeys(REPLACED, REPLACEMENT))
_ANY_REPLACED = re.compile(f"[{re.escape(REPLACED)}]")

# The same characters (but C0, which JSON encoders escape already) as UTF-8, found in bytes.
# In valid UTF-8 these octets only ever start the character they encode.
_RAW_IN_JSON = re.compile(rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]")
_RAW_IN_TEXT = re.compile(
    rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]"
)
_REPLACEMENT_UTF8 = REPLACEMENT.encode("utf-8")


def replace_controls(value: str) -> str:
    """`value` with each control (but TAB, CR, LF), line separator and bidi control made U+FFFD."""
    # Almost no value has one. isprintable() is the cheapest proof of that for ordinary text
    # (every character replaced here is in a category it refuses: Cc, Cf, Zl, Zp); text it
    # refuses (a newline, a tab, a no-break space) gets the regex scan, and translate(), which
    # is slow on non-ASCII text, runs only when there is something to replace.
    if value.isprintable() or _ANY_REPLACED.search(value) is None:
        return value
    return value.translate(_TABLE)


def replace_controls_utf8(data: bytes) -> bytes:
    """UTF-8 `data` with the characters `replace_controls` replaces made U+FFFD (TAB, CR, LF kept)."""
    if _RAW_IN_TEXT.search(data) is None:
        return data
    return _RAW_IN_TEXT.sub(_REPLACEMENT_UTF8, data)


def json_escape(document: bytes) -> bytes:
    """A UTF-8 JSON document with DEL, C1, line separators and bidi controls written `\\uXXXX`.

    Outside strings JSON has none of these characters, and inside one the escape decodes to the
    same text, so the document means exactly what it meant.
    """
    if _RAW_IN_JSON.search(document) is None:
        return document
    return _RAW_IN_JSON.sub(lambda match: b"\\u%04x" % ord(match.group().decode("utf-8")), document)
