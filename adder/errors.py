"""Error messages for one line: what the project's own errors quote of the exception that caused them, and
who says them when every process of a launch meets the same error."""

from __future__ import annotations

import argparse
import pickle
import re
import sys
from typing import NoReturn

from accelerate.utils import get_cpu_distributed_information


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


def speaks_for_its_machine() -> bool:
    """True on each machine's first process as the launcher numbers them (torchrun's LOCAL_RANK, or MPI's),
    and on a process started without a launcher: the one that says an error every process meets, so that a
    machine's console shows it once."""
    return get_cpu_distributed_information().local_rank == 0


def exit_with_error(message: str) -> NoReturn:
    """Ends the process (exit status 1) with `error: MESSAGE` on stderr, said by one process a machine: for
    errors met before the processes meet (the command line, the checkpoint). Once they have, the main process
    alone speaks (train.py, evaluate.py)."""
    if speaks_for_its_machine():
        print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, with its usage and error said by one process a machine: each process parses the command."""

    def error(self, message: str) -> NoReturn:
        if speaks_for_its_machine():
            super().error(message)  # the usage, then "PROG: error: MESSAGE", and exit status 2
        sys.exit(2)
