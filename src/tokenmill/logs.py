"""Library noise goes to a stage's log file; the terminal keeps tokenmill's own lines and bars.

    with library_logs(out_dir / "logs" / "train.log"):
        ...   # transformers, peft, bitsandbytes, torch: their log records and Python warnings land in the file

The data stages' datatrove logs already go to their `logs/` folders (engine.datatrove_logs_to_files); this
is the same for training and evaluation, where peft's import makes bitsandbytes warn about CPU kernels it
could not fetch, and transformers issues FutureWarnings, none of which a person running a stage can act on.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

OWN = "tokenmill"


def _own_records(record: logging.LogRecord) -> bool:
    return record.name == OWN or record.name.startswith(OWN + ".")


@contextlib.contextmanager
def library_logs(path: Path) -> Iterator[None]:
    """While the block runs, records of loggers outside tokenmill and Python warnings go to `path` only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    terminal = list(root.handlers)
    for handler in terminal:
        handler.addFilter(_own_records)
    root.addHandler(to_file)
    hf_handlers = _transformers_to_root()
    logging.captureWarnings(True)  # warnings.warn → the "py.warnings" logger → the file
    try:
        yield
    finally:
        logging.captureWarnings(False)
        _transformers_back(hf_handlers)
        root.removeHandler(to_file)
        to_file.close()
        for handler in terminal:
            handler.removeFilter(_own_records)


def _transformers_to_root():
    """transformers logs through its own stderr handler and does not propagate: route it through the root."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()
    return hf_logging


def _transformers_back(hf_logging) -> None:
    if hf_logging is not None:
        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()
