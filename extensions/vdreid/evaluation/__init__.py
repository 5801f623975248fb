"""vdreid.evaluation: exact AGW metrics, blockwise faiss/torch ranking, protocol runner, ranked lists, plots."""

from vdreid.evaluation.metrics import evaluate
from vdreid.evaluation.ranking import evaluate_features

__all__ = ["evaluate", "evaluate_features"]
