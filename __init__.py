"""ComfyUI-EMO: audio-driven portrait animation (EMO, Hallo, EchoMimic v1) as ComfyUI nodes.

ComfyUI imports this folder as a package. Importing it registers the ``models/emo`` folder and the
node classes; it builds no model, downloads nothing and creates no folders.
"""

WEB_DIRECTORY = "./web"

if __package__:  # imported as a package (ComfyUI, or a test loading the pack the same way)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from .nodes._comfy import register_model_folders

    register_model_folders()
else:  # imported as a plain file, e.g. by pytest collecting a checkout whose folder name has a dash
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
