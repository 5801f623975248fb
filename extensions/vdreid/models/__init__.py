"""VD network: timm encoders, information bottlenecks, torchreid registry entries."""

from vdreid.models.outputs import BranchOutput, VDOutput, gray_view


def register_models() -> None:
    """Register the VD models with torchreid's model factory (filled in by the models module)."""


__all__ = ["BranchOutput", "VDOutput", "gray_view", "register_models"]
