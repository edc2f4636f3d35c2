"""Showing text that came from a file: a model card's name and classes, a manifest's fields, a graph's node
names. A planted file can hold terminal control sequences there ("\\x1b]0;title\\x07" retitles the window,
"\\x1b[2J" clears it, "\\r" overwrites what was printed); every place that shows such text on a terminal or in
a Markdown report passes it through `printable`. JSON reports keep the value as it is: json.dumps escapes it.
"""

import re

# C0 controls but tab, DEL, C1 controls (U+0080-U+009F: U+009B is a one-character CSI to some terminals), the
# line and paragraph separators, and the bidirectional overrides and isolates that reorder how text reads.
_OTHERS = "\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
_ANY = re.compile(f"[\x00-\x08\x0a-\x1f{_OTHERS}]")
_BUT_NEWLINE = re.compile(f"[\x00-\x08\x0b-\x1f{_OTHERS}]")
_NAMED = {"\n": "\\n", "\r": "\\r"}


def _escape(match: "re.Match[str]") -> str:
    c = match.group(0)
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def printable(text: object, multiline: bool = False) -> str:
    """`text` with every control character shown as its escape (ESC as the four characters \\x1b), so a terminal
    prints it instead of obeying it; newlines too unless `multiline` (a whole report)."""
    return (_BUT_NEWLINE if multiline else _ANY).sub(_escape, str(text))
