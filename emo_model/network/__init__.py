"""The network: the paper's parts (§3.2) as torch modules, from the shared forward context up to the whole model."""
