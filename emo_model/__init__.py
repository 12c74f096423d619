"""EMO (Emote Portrait Alive) in pure PyTorch + diffusers, importable without ComfyUI."""

__version__ = "0.1.0"
