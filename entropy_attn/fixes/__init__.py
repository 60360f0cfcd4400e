"""What else breaks at other sizes, and its training-free fixes beside the scale: RoPE and
sin-cos position presets for DiTs (``positions.py``) and ScaleCrafter's re-dilated UNet
convolutions (``redilation.py``). Installed by :func:`entropy_attn.enable` (``positions=``,
``redilate=``); neither module knows of the integration that installs it."""
