"""How a run's processes stop together: a failure on any of them stops all of them, with its message.

One process that stopped alone would leave the others waiting for it at their next barrier, and only the
main process prints.
"""

from __future__ import annotations

import contextlib

from accelerate.utils import gather_object


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
