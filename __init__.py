"""ComfyUI-EMO: audio-driven portrait animation (EMO, Hallo, EchoMimic v1) as ComfyUI nodes.

ComfyUI imports this folder as a package. Importing it registers the ``models/emo`` folder and the
node classes; it builds no model, downloads nothing and creates no folders.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from .nodes._comfy import register_model_folders

register_model_folders()

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
