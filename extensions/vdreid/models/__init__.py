"""Every method's networks and what they share: VD's three-branch network with information bottlenecks
(:func:`build_vd_net`), AGW's two-stream network (:func:`build_agw`, also CAJ's), DEEN's network with MFA and DEE
blocks, the BNNeck baseline (:func:`build_bnneck`); timm encoders (CNNs with last stride 1, ViT/DeiT/Swin), pooling,
BNNeck, pretrained-weight loading, and the layouts of checkpoints written by the authors' own code
(:func:`register_layout`, :func:`from_original`).

Each method registers its models with torchreid when it registers itself (:func:`vdreid.methods.register`), after
which ``torchreid.models.build_model('vd_resnet50' | 'agw' | 'caj' | 'deen' | ..., num_classes, pretrained=False)``
works.
"""

# the original-checkpoint layouts, registered in this order (messages list them so)
from vdreid.models import agw_original, vd_original  # noqa: F401,I001  # isort: skip
from vdreid.models import deen_original  # noqa: F401,I001  # isort: skip
from vdreid.models.agw import AGW_PRESETS, AGWNet, build_agw, make_agw_factory
from vdreid.models.attention import ShallowCAM
from vdreid.models.backbones import Encoder, set_last_stride_one
from vdreid.models.baseline import BNNECK_PRESETS, BNNeckNet, build_bnneck, make_bnneck_factory
from vdreid.models.bottleneck import BOTTLENECK_FORMS, InformationBottleneck, gaussian_kl
from vdreid.models.neck import NeckOutput
from vdreid.models.nonlocal_block import NonLocalBlock
from vdreid.models.original import (
    OriginalLayout,
    Rule,
    detect_original,
    from_original,
    model_from_original,
    original_kinds,
    register_layout,
)
from vdreid.models.outputs import BranchOutput, VDOutput, gray_view
from vdreid.models.pooling import GeneralizedMeanPooling, gem_pool
from vdreid.models.vd_net import BRANCHES, FEATURE_MODES, PRESETS, ROUTINGS, Branch, VDNet, build_vd_net, make_factory
from vdreid.models.weights import PretrainedWeightsError, hub_reachable, load_backbone_file, read_state_dict

__all__ = [
    "AGW_PRESETS",
    "BNNECK_PRESETS",
    "make_agw_factory",
    "make_bnneck_factory",
    "AGWNet",
    "BNNeckNet",
    "GeneralizedMeanPooling",
    "NeckOutput",
    "NonLocalBlock",
    "OriginalLayout",
    "Rule",
    "original_kinds",
    "register_layout",
    "build_agw",
    "build_bnneck",
    "detect_original",
    "from_original",
    "gem_pool",
    "model_from_original",
    "BOTTLENECK_FORMS",
    "BRANCHES",
    "FEATURE_MODES",
    "PRESETS",
    "ROUTINGS",
    "Branch",
    "BranchOutput",
    "Encoder",
    "InformationBottleneck",
    "PretrainedWeightsError",
    "ShallowCAM",
    "VDNet",
    "VDOutput",
    "build_vd_net",
    "gaussian_kl",
    "gray_view",
    "hub_reachable",
    "load_backbone_file",
    "make_factory",
    "read_state_dict",
    "set_last_stride_one",
]
