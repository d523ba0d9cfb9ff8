"""Where linewatch finds its files: its own package files, the model registry, camera scenes and profiles.

A source checkout runs from its own `models/` and `cameras/`; an installed wheel has none beside it,
so the home comes from `LINEWATCH_HOME` (the container image sets `/opt/linewatch`), and without it
from the working directory. `LINEWATCH_MODELS` moves the registry alone. The config's `model.path`
still names any model file; deployed configs name the registry's active link so promote and hot swap
work there too.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_ROOT / "api" / "static"
_CHECKOUT = PACKAGE_ROOT.parent.parent  # inspect/linewatch -> the repository, when running from one


def _home() -> Path:
    if os.environ.get("LINEWATCH_HOME"):
        return Path(os.environ["LINEWATCH_HOME"])
    if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "models").is_dir():
        return _CHECKOUT
    return Path.cwd()


HOME = _home()
#: The model registry (index, versions, `active/<recipe>.onnx` links).
MODELS_DIR = Path(os.environ.get("LINEWATCH_MODELS") or HOME / "models")
#: The registry's link to the model active for the default recipe (`linewatch models promote` moves it).
DEFAULT_MODEL = MODELS_DIR / "active" / "default.onnx"


def resolve(path: Path) -> Path:
    """A relative scene or profile path is looked up from the working directory, then the home."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() or not (HOME / p).exists() else HOME / p
