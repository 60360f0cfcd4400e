"""Offline tiny pipelines with random weights, built from configs (no downloads), for demos,
the CLI's ``tiny-*`` models and the tests: text-to-image pipelines and their tokenizers
(``pipelines.py``), and ControlNet, img2img and inpainting variants (``variants.py``)."""
