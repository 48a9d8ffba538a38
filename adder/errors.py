"""Error messages for one line: what the project's own errors quote of the exception that caused them."""

from __future__ import annotations


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-blank line of the exception's message, at most `limit` characters, or its type's name if
    the message is empty. torch's and torchvision's messages often go on for several lines (and torch.load's
    advise weights_only=False, wrong for an untrusted file)."""
    line = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    return line[:limit]
