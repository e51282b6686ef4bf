"""Devices: one place that turns ``device="auto"`` into a ``torch.device``."""

import torch


def pick_device(device="auto") -> torch.device:
    """``"auto"`` -> ``cuda`` when a GPU is present, else ``cpu``; anything else is passed to torch."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
