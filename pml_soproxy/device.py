"""Device and precision, in one place.

The trunk may run under bf16/fp16 autocast on a GPU; the embedder output, the loss and
the soft-orthogonality term are always computed in float32 (the loss enforces this
itself, see ``SoftOrthogonalProxyAnchorLoss``).
"""

from contextlib import nullcontext
from typing import Optional

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` is cuda when available, else cpu; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available")
    return device


def autocast_dtype(
    device: torch.device, precision: str = "auto"
) -> Optional[torch.dtype]:
    """The autocast dtype for the trunk, or None for plain float32.

    ``"auto"`` means bf16 on a GPU that supports it, fp16 on other GPUs, float32 on CPU.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


class AutocastTrunk(torch.nn.Module):
    """Runs a trunk under autocast and hands back float32 features."""

    def __init__(
        self, trunk: torch.nn.Module, device_type: str, dtype: Optional[torch.dtype]
    ):
        super().__init__()
        self.trunk = trunk
        self.device_type = device_type
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = (
            torch.autocast(self.device_type, dtype=self.dtype)
            if self.dtype is not None
            else nullcontext()
        )
        with context:
            features = self.trunk(x)
        return features.float()


def grad_scaler(device: torch.device, dtype: Optional[torch.dtype]):
    """A GradScaler for fp16 training, else None (bf16 and fp32 need none)."""
    if dtype == torch.float16:
        return torch.amp.GradScaler(device.type)
    return None
