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


def python_blocks() -> list[tuple[int, str]]:
    """Every ```python block of the README: (line, code)."""
    text = README.read_text(encoding="utf-8")
    return [
        (text[: m.start()].count("\n") + 1, m.group(1))
        for m in re.finditer(r"```python\n(.*?)```", text, re.DOTALL)
    ]


def test_every_readme_python_block_runs(monkeypatch):
    """The blocks for a real model run too, with the download and the GPU swapped for the tiny
    offline pipeline on the CPU (and 2 denoising steps): names, arguments and the enable /
    disable sequence are checked as written."""
    from diffusers import StableDiffusionPipeline

    from entropy_attn.tiny.pipelines import tiny_sd_pipeline

    call = StableDiffusionPipeline.__call__
    monkeypatch.setattr(
        StableDiffusionPipeline,
        "from_pretrained",
        classmethod(lambda cls, *a, **k: tiny_sd_pipeline()),
    )
    monkeypatch.setattr(StableDiffusionPipeline, "to", lambda self, *a, **k: self)
    monkeypatch.setattr(
        StableDiffusionPipeline,
        "__call__",
        lambda self, *a, **k: call(self, *a, **{**k, "num_inference_steps": 2}),
    )
    blocks = python_blocks()
    assert len(blocks) >= 3
    for line, code in blocks:
        namespace = {"pipe": tiny_sd_pipeline()}  # the first screen's block takes the user's
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"{README}:{line}", "exec"), namespace)
        pipe = namespace["pipe"]
        assert namespace["image"].size[0] > 0, f"README line {line}: no image"
        ours = any(
            type(p).__module__.startswith("entropy_attn")
            for p in pipe.unet.attn_processors.values()
        )
        # A block that disables leaves nothing of entropy-attn; one that does not, leaves it on.
        assert ours == ("entropy_attn.disable(pipe)" not in code), f"README line {line}"


DOCS = sorted((README.parent / "docs").glob("*.md"))
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    return re.sub(r"`[^`\n]*`", "", text)


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lowercase, punctuation dropped, spaces to '-',
    repeats numbered -1, -2, ..."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, n = slug, 0
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


def test_github_anchors_follow_githubs_rules():
    text = "# A `code` title\n## Evaluation (the paper's Tables 1-2), on GPUs\n## A\n## A\n"
    assert github_anchors(text) == {
        "a-code-title",
        "evaluation-the-papers-tables-1-2-on-gpus",
        "a",
        "a-1",
    }


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_links_resolve(page: Path):
    """Every relative link and image of the README and docs/*.md names a file that exists, and
    every anchor names a heading of the page it points to."""
    targets = LINK.findall(_prose(page.read_text(encoding="utf-8")))
    assert targets, f"{page.name} has no links"
    broken = []
    for target in targets:
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file}")
        elif (
            anchor
            and file.suffix == ".md"
            and anchor not in github_anchors(file.read_text(encoding="utf-8"))
        ):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_is_short_and_docs_are_linked():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= 15_500
    linked = {t.partition("#")[0] for t in LINK.findall(_prose(text))}
    assert {f"docs/{p.name}" for p in DOCS} <= linked  # every docs page is reachable
