"""A folder of pose templates (``0.npy``, ``1.npy``, ..: pickled DWPose dicts) read without running pickled code."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

# the only globals a pose template's pickle may name: numpy arrays, their dtypes and scalars
_ALLOWED = {
    (mod, name)
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
} | {("numpy", "ndarray"), ("numpy", "dtype")}


class PoseTemplateError(ValueError):
    """A pose folder or file that is not what the original's pose templates are."""


class _NumpyOnly(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED:
            raise PoseTemplateError(f"it names {module}.{name}, which a pose template never does (not loaded)")
        import importlib

        return getattr(importlib.import_module(module), name)


def read_template(path: Path) -> dict:
    """One ``.npy`` pose template: a dict with ``hands`` [n, 21, 2], ``hands_score`` [n, 21], ``draw_pose_params``."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(fh, max_header_size=1 << 20)
            if dtype.hasobject:
                value = _NumpyOnly(fh).load()
                value = value.item() if isinstance(value, np.ndarray) and value.shape == () else value
            else:
                raise PoseTemplateError(f"an array {shape} of {dtype}, not a pose dict")
    except PoseTemplateError as exc:
        raise PoseTemplateError(f"{path.name}: {exc}") from None
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise PoseTemplateError(f"{path.name}: not a readable .npy pose template ({exc})") from None
    if not isinstance(value, dict) or "hands" not in value or "hands_score" not in value:
        raise PoseTemplateError(f"{path.name}: not a DWPose pose dict with hands and hands_score")
    return value


def template_files(folder: Path) -> list[Path]:
    """``0.npy`` .. ``n-1.npy`` of a pose folder, in frame order (as the original reads ``{index}.npy``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PoseTemplateError(f"pose folder {folder} does not exist; give a folder of 0.npy, 1.npy, .. pose templates")
    numbered = {int(p.stem): p for p in folder.glob("*.npy") if p.stem.isdigit()}
    if not numbered:
        raise PoseTemplateError(f"{folder} holds no 0.npy, 1.npy, .. pose templates")
    missing = [i for i in range(max(numbered) + 1) if i not in numbered]
    if missing:
        raise PoseTemplateError(f"{folder}: pose templates {missing[:5]} are missing (frames must be 0.npy .. {max(numbered)}.npy)")
    return [numbered[i] for i in range(len(numbered))]
