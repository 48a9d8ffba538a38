"""Error messages for one line: what the project's own errors quote of the exception that caused them."""

from __future__ import annotations

import pickle
import re


def first_line(err: BaseException, limit: int = 200, *, with_type: bool = False) -> str:
    """The first non-blank line of the exception's message, at most `limit` characters, or its type's name if
    the message is empty; with_type puts the type's name before a message ("OSError: ..."). torch's and
    torchvision's messages often go on for several lines. torch.load(weights_only=True)'s refusals open with
    advice to load with weights_only=False, which would run an untrusted file's code: they are said here by
    what the file holds instead."""
    name = type(err).__name__
    if isinstance(err, pickle.UnpicklingError):
        called = would_call(err)
        line = (f"it would call {called}; only tensors are loaded, nothing from the file ran" if called
                else "not a readable PyTorch file: truncated or another kind")
    else:
        line = next((line.strip() for line in str(err).splitlines() if line.strip()), "")[:limit]
    if not line:
        return name
    return f"{name}: {line}" if with_type else line


def would_call(err: BaseException) -> str | None:
    """What a pickle refused by torch.load(weights_only=True) would have called ("posix.system"), or None for
    any other error. torch's message around the name advises weights_only=False, which would run it."""
    found = re.search(r"GLOBAL (\S+)", str(err)) if isinstance(err, pickle.UnpicklingError) else None
    return found.group(1) if found else None
