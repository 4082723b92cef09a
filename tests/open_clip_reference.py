"""open_clip's own ``ClipLoss`` as the test oracle, loaded from the installed file ``open_clip/loss.py``.

``import open_clip`` imports its models, which need torchvision; the loss module itself imports
only torch (and horovod when present), so it is loaded alone by path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType


def open_clip_loss_module() -> ModuleType | None:
    """The module ``open_clip.loss`` of the installed open-clip-torch, or None when it is not installed."""
    spec = importlib.util.find_spec("open_clip")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "loss.py"
    if not path.is_file():
        return None
    loss_spec = importlib.util.spec_from_file_location("open_clip_loss_oracle", path)
    module = importlib.util.module_from_spec(loss_spec)
    loss_spec.loader.exec_module(module)
    return module
