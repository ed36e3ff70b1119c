"""Choosing the torch device: CUDA when present, else Apple MPS, else CPU."""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; an explicit choice that is not available raises ValueError."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU")
    if preference == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but is not available")
    if preference not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {preference!r}; use auto, cpu, cuda or mps")
    return torch.device(preference)


def describe_device(device: torch.device) -> str:
    """A short human name, e.g. 'cuda (NVIDIA H100)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' if n != 1 else ''})"
    return device.type


def seed_everything(seed: int, device: torch.device) -> None:
    """Same seed on the same device gives the same training and the same scores."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
