"""Tools for measuring the method: attention entropy by layer and size and the paper's Figs. 5/6
(``analysis.py``), and the FID / CLIP-score harness across resolutions (``evaluation.py``)."""
