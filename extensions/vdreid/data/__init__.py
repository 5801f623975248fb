"""VI-ReID datasets (SYSU-MM01, RegDB), protocols, cross-modal sampler, synthetic data."""

from vdreid.data.protocol import Protocol


def register_datasets() -> None:
    """Register the VI datasets with torchreid (filled in by the datasets module)."""


__all__ = ["Protocol", "register_datasets"]
