"""How a run's processes stop together: a failure on any of them stops all of them, with its message.

One process that stopped alone would leave the others waiting for it at their next barrier, and only the
main process prints. Before the processes meet (the command line, the checkpoint), each meets the same
error on its own, and the first process of each machine says it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from accelerate.utils import broadcast_object_list, gather_object

T = TypeVar("T")


def speaks_for_its_machine() -> bool:
    """Whether this process is its machine's first, as the launcher numbered it (torchrun's LOCAL_RANK; a
    process launched alone is): it alone prints an error that every process meets, once per machine's
    console rather than once per process."""
    return os.environ.get("LOCAL_RANK", "0") == "0"


def exit_with_error(message: str) -> NoReturn:
    """Ends the process (exit status 1) with `error: MESSAGE` on stderr, said by one process a machine."""
    if speaks_for_its_machine():
        print(f"error: {message}", file=sys.stderr)
    sys.exit(1)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's, with its usage and error said by one process a machine: each process parses the command."""

    def error(self, message: str) -> NoReturn:
        if speaks_for_its_machine():
            super().error(message)  # the usage, then "PROG: error: MESSAGE", and exit status 2
        sys.exit(2)


def first_failure(accelerator, failure: str | None) -> str | None:
    """The first failing process's message (naming the process unless it is the main one), or None if none
    failed: the same answer on every process, so that all stop together."""
    for rank, message in gather_object([(accelerator.process_index, failure)]):
        if message:
            return message if rank == 0 else f"process {rank}: {message}"
    return None


@contextlib.contextmanager
def all_or_none(accelerator, catch, *, raise_as):
    """Runs the block on every process; if it raised `catch` on any of them, every process raises `raise_as`
    with the first failure's message (first_failure): all stop together, or none does. Other exceptions pass
    through on their own process only, as any error would."""
    failure = None
    try:
        yield
    except catch as err:
        failure = str(err) or type(err).__name__  # an empty message must still stop the run
    if failure := first_failure(accelerator, failure):
        raise raise_as(failure)


def from_main_process(accelerator, read: Callable[[], T], catch, *, raise_as) -> T:
    """read() on the main process alone, its result sent to every process: for a file on the main process's
    disk (other nodes need not share it). If it raised `catch` there, every process raises `raise_as` with
    its message."""
    payload: list = [None]
    if accelerator.is_main_process:
        try:
            payload = [read()]
        except catch as err:
            payload = [raise_as(str(err))]
    broadcast_object_list(payload, from_process=0)
    if isinstance(payload[0], raise_as):
        raise payload[0]
    return payload[0]
