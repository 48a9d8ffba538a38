"""How a run's processes stop together: a failure on any of them stops all of them, with its message.

One process that stopped alone would leave the others waiting for it at their next barrier, and only the
main process prints. (Before the processes meet, adder/errors.py's exit_with_error speaks for them.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

from accelerate.utils import broadcast_object_list, gather_object

from adder.errors import first_line

T = TypeVar("T")


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
    its message; anything else (a bug) stops the others with raise_as too, and goes on as itself on the main
    process, rather than leave them waiting for the result."""
    payload: list = [None]
    unexpected = None
    if accelerator.is_main_process:
        try:
            payload = [read()]
        except catch as err:
            payload = [raise_as(str(err))]
        except Exception as err:
            payload, unexpected = [raise_as(f"the main process failed: {first_line(err, with_type=True)}")], err
    broadcast_object_list(payload, from_process=0)
    if unexpected is not None:
        raise unexpected
    if isinstance(payload[0], raise_as):
        raise payload[0]
    return payload[0]
