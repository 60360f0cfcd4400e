"""``python -m entropy_attn.cli``: the ``entropy-attn`` command."""

import sys

from . import main

sys.exit(main())
