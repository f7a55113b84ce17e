"""A bar per evaluation pass (set name, tokens/s, ETA), so that a long evaluation is seen as one: a CPT run's
step-0 evaluation of a 135M model on four sets takes minutes on a CPU, with the step bar standing still."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from tqdm import tqdm


@contextlib.contextmanager
def eval_bar(label: str, total: int, unit: str = "tok", enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n)`; the bar goes away when the pass ends (the result is printed where it belongs)."""
    bar = tqdm(total=total, desc=label, unit=unit, unit_scale=True, leave=False, dynamic_ncols=True,
               disable=not enabled)
    try:
        yield bar.update
    finally:
        bar.close()
