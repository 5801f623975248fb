"""vdreid.evaluation: the one evaluator of every method and dataset: exact metrics (AGW's and DEEN's definitions),
blockwise ranking, faiss top-k search (exact or approximate) and k-reciprocal re-ranking, the protocol runner, feature
extraction, ranked lists and CMC plots. It knows no method and no dataset: a :class:`~vdreid.data.Protocol` says
what to compute."""

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
