"""vdreid.losses: every method's objective. VD's (Eq. 8, 12, 15, 16, 17) in the paper's form and as the released
code computes it, over a table of registered terms; AGW's and the BNNeck baseline's criteria (WRT, batch-hard
triplet); CAJ's adaptive weighted triplet (:func:`adaptive_weighted_triplet`); DEEN's cross-modal prototype and
orthogonal losses.

Shared contracts (DESIGN.md): :func:`kl_distill`, :func:`js_divergence`, :func:`sinkhorn_distance`; the composite
:class:`VDLoss` / :class:`VDLossConfig` used by the engine, over the term table: :func:`register_term` adds a term to
VD's objective (``docs/adding-a-loss.md``).
"""

from vdreid.losses.baseline import AGWCriterion, BNNeckCriterion
from vdreid.losses.caj import CAJCriterion, adaptive_weighted_triplet
from vdreid.losses.composite import BRANCH_ORDER, VDLoss, VDLossConfig
from vdreid.losses.cpm import cross_modal_prototype_loss
from vdreid.losses.deen import DEENCriterion, orthogonal_loss
from vdreid.losses.distillation import (
    KL_FORMS,
    js_divergence,
    kl_distill,
    vcd_loss_cross,
    vcd_loss_official,
    vcd_loss_paper,
    vsd_loss,
)
from vdreid.losses.ib import ConventionalIB, JSMIEstimator, js_mi_lower_bound, minmax_estimate
from vdreid.losses.reid import (
    OFFICIAL_RANK,
    RLL_ALPHA,
    RLL_MARGIN,
    RLL_TN,
    dml_loss,
    label_smooth_ce,
    official_rank_loss,
    pairwise_euclidean,
    ranked_list_loss,
    triplet_loss,
)
from vdreid.losses.sinkhorn import sinkhorn_distance
from vdreid.losses.terms import (
    RECIPES,
    LossTerm,
    Needs,
    TermContext,
    TermOption,
    get_term,
    register_term,
    resolve_objective,
    term_names,
    unregister_term,
)
from vdreid.losses.vd_terms import METRICS, VCD_FORMS
from vdreid.losses.wrt import weighted_regularized_triplet

__all__ = [
    "CAJCriterion",
    "adaptive_weighted_triplet",
    "AGWCriterion",
    "BNNeckCriterion",
    "DEENCriterion",
    "cross_modal_prototype_loss",
    "orthogonal_loss",
    "weighted_regularized_triplet",
    "BRANCH_ORDER",
    "KL_FORMS",
    "METRICS",
    "OFFICIAL_RANK",
    "RECIPES",
    "RLL_ALPHA",
    "RLL_MARGIN",
    "RLL_TN",
    "VCD_FORMS",
    "LossTerm",
    "Needs",
    "TermContext",
    "TermOption",
    "get_term",
    "register_term",
    "resolve_objective",
    "term_names",
    "unregister_term",
    "ConventionalIB",
    "JSMIEstimator",
    "VDLoss",
    "VDLossConfig",
    "dml_loss",
    "js_divergence",
    "js_mi_lower_bound",
    "kl_distill",
    "label_smooth_ce",
    "minmax_estimate",
    "official_rank_loss",
    "pairwise_euclidean",
    "ranked_list_loss",
    "sinkhorn_distance",
    "triplet_loss",
    "vcd_loss_cross",
    "vcd_loss_official",
    "vcd_loss_paper",
    "vsd_loss",
]
