"""Known, harmless log lines that diffusers and transformers print during *our* calls.

:func:`quiet_library_logs` drops exactly these lines, and only while one of entropy-attn's own
calls runs (building a tiny pipeline, casting a model we built, the CLI's generations): a filter is
attached to the one logger that emits each line and removed afterwards. Other messages of those
loggers, and everything the user's own code triggers, pass untouched.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

# (logger that emits the line, pattern of the line)
KNOWN_NOISE: tuple[tuple[str, str], ...] = (
    # Importing diffusers' SD pipelines loads transformers' CLIP/SigLIP image processors; without
    # torchvision they fall back to the PIL ones (which entropy-attn never uses) and say so.
    ("transformers.utils.import_utils", r"`\w+ImageProcessor` requires torchvision"),
    # diffusers' LDM pipeline reads LDMBert's config.use_return_dict, deprecated in transformers 5.
    ("transformers.configuration_utils", r"`use_return_dict` is deprecated"),
    # Casting a model that we built from a config (not loaded) with .to(dtype): no module of
    # ours has to stay in float32 (the list in the message is empty).
    (
        "diffusers.models.modeling_utils",
        r"There are modules in \w+ that should be kept in float32: \[\]",
    ),
)


class _DropLines(logging.Filter):
    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


@contextlib.contextmanager
def quiet_library_logs() -> Iterator[None]:
    """Drop :data:`KNOWN_NOISE` lines while the block runs (also usable as a decorator)."""
    attached = []
    for name, pattern in KNOWN_NOISE:
        logger = logging.getLogger(name)
        dropper = _DropLines(pattern)
        logger.addFilter(dropper)
        attached.append((logger, dropper))
    try:
        yield
    finally:
        for logger, dropper in attached:
            logger.removeFilter(dropper)
