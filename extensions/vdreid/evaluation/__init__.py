"""vdreid.evaluation: exact AGW metrics, blockwise ranking, faiss top-k search and k-reciprocal re-ranking, protocol
runner, ranked lists, plots."""

from vdreid.evaluation.approximate import ApproximateSearch
from vdreid.evaluation.evaluator import EvalReport, evaluate_model, provenance_defaults, run_protocol
from vdreid.evaluation.extract import extract_features
from vdreid.evaluation.knn import GalleryIndex, SearchResult, search
from vdreid.evaluation.metrics import evaluate
from vdreid.evaluation.ranking import evaluate_features
from vdreid.evaluation.rerank import RerankedDistances, rerank_distances
from vdreid.evaluation.visualize import plot_cmc, save_ranked_lists, save_ranked_lists_for_protocol

__all__ = [
    "ApproximateSearch",
    "EvalReport",
    "GalleryIndex",
    "RerankedDistances",
    "SearchResult",
    "evaluate",
    "evaluate_features",
    "evaluate_model",
    "extract_features",
    "plot_cmc",
    "provenance_defaults",
    "rerank_distances",
    "run_protocol",
    "save_ranked_lists",
    "save_ranked_lists_for_protocol",
    "search",
]
