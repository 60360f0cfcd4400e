"""The package imports the same way installed and from a bare source checkout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from entropy_attn._source_tree import _SourceKernelsFinder

REPO = Path(__file__).resolve().parent.parent


def test_source_finder_maps_only_the_kernels_package() -> None:
    finder = _SourceKernelsFinder(REPO / "kernels")
    spec = finder.find_spec("entropy_attn.kernels")
    assert spec is not None
    assert Path(spec.origin) == REPO / "kernels" / "__init__.py"
    assert spec.submodule_search_locations == [str(REPO / "kernels")]
    assert finder.find_spec("kernels") is None
    assert finder.find_spec("entropy_attn.other") is None


def test_kernels_import_from_a_checkout_that_was_not_installed(tmp_path: Path) -> None:
    """What the GPU machine does: PYTHONPATH=checkout, no ``pip install``. Every finder that an
    editable install put on ``sys.meta_path`` (setuptools puts the class itself there) is dropped
    first, so only the checkout can answer, wherever the package is installed from."""
    code = (
        "import sys\n"
        "def name(f): return getattr(f, '__name__', type(f).__name__)\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'Editable' not in name(f)]\n"
        "import entropy_attn, entropy_attn.kernels as k\n"
        "from entropy_attn.kernels.attention_fwd import head_dim_split\n"
        "print(entropy_attn.__file__)\n"
        "print(k.__file__)\n"
        "print(head_dim_split(80))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "TRITON_INTERPRET": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    package, kernels, split = result.stdout.split("\n")[:3]
    assert Path(package) == REPO / "entropy_attn" / "__init__.py"
    assert Path(kernels) == REPO / "kernels" / "__init__.py"
    assert split == "(64, 16)"
