"""The README's offline quickstart runs as written and does what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

README = Path(__file__).resolve().parent.parent / "README.md"


def quickstart_block() -> str:
    """The first ```python block of the README's Quickstart section."""
    section = README.read_text(encoding="utf-8").split("\n## Quickstart\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the Quickstart section has no python block"
    return match.group(1)


def test_offline_quickstart_runs_as_written():
    code = quickstart_block()
    assert "num_inference_steps=2" in code and "from_pretrained" not in code  # offline, short
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README) + ":Quickstart", "exec"), namespace)
    pipe, image = namespace["pipe"], namespace["image"]
    assert image.size == (256, 192) and printed.getvalue() == "(256, 192)\n"
    # `disable` put the stock processors back: nothing of entropy-attn is left on the UNet.
    assert not any(
        type(p).__module__.startswith("entropy_attn") for p in pipe.unet.attn_processors.values()
    )
