"""Tools for measuring the method: the paper's Eq. 5 and Gaussian entropy curves (``theory.py``),
per-layer attention entropy of a real denoiser (``analysis.py``) and its figures, the paper's
Figs. 5/6 (``plots.py``), and the FID / CLIP-score harness across resolutions
(``evaluation.py``)."""
