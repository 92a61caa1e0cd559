"""The CLI's two consoles: results on stdout, diagnostics and progress on stderr.

Both are safe for text read from files (patch, tensor and file names, labels): nothing printed is
read as rich markup or emoji codes, and control characters (terminal escape sequences, carriage
returns, bidirectional overrides) are shown escaped, as ``\\x1b``. Outside a terminal (a pipe or a
log) lines are never wrapped or cut: tables take the width their cells need.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from rich.console import Console, ConsoleDimensions
from rich.segment import Segment
from rich.text import Text

#: C0 controls but tab and newline, DEL, C1 controls, and the Unicode bidirectional controls.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

#: the width of a console that is not a terminal: wide enough that no table cell is cut.
PIPE_WIDTH = 10_000


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """``text`` with every control character escaped (``"a\\x1b[31m"`` → ``"a\\\\x1b[31m"``).

    Example:
        >>> safe_text("fog\\x1b]8;;http://x\\x07")
        'fog\\\\x1b]8;;http://x\\\\x07'
    """
    return _UNSAFE.sub(_escape, text)


def plain(text: object, *, style: str = "") -> Text:
    """A rich ``Text`` of ``str(text)`` with control characters escaped; never read as markup."""
    return Text(safe_text(str(text)), style=style)


class SafeConsole(Console):
    """A ``Console`` for untrusted text: no markup or emoji by default, control characters
    escaped in every string it renders and in every segment it writes (rich's own styles and
    cursor controls are added after, and pass)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("markup", False)
        kwargs.setdefault("emoji", False)
        kwargs.setdefault("highlight", False)
        super().__init__(**kwargs)

    @property
    def size(self) -> ConsoleDimensions:
        """The terminal's size; :data:`PIPE_WIDTH` wide when writing to a pipe or a file."""
        size = super().size
        if self._width is None and not self.is_terminal and not self.is_jupyter:
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        self._width, self._height = new_size

    def render_str(self, text: str, **kwargs: Any) -> Text:
        """Rich's ``render_str`` of ``text`` with its control characters escaped first."""
        return super().render_str(safe_text(text), **kwargs)

    def _render_buffer(self, buffer: Iterable[Segment]) -> str:
        # the last line of defence: Text built elsewhere (log records) reaches here unescaped
        cleaned = (s if s.control else Segment(safe_text(s.text), s.style) for s in buffer)
        return super()._render_buffer(cleaned)


out = SafeConsole()
err = SafeConsole(stderr=True)

__all__ = ["PIPE_WIDTH", "SafeConsole", "err", "out", "plain", "safe_text"]
