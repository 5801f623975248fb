"""VD network: timm encoders, information bottlenecks, torchreid registry entries.

``import vdreid`` calls :func:`register_models`, after which ``torchreid.models.build_model('vd_resnet50' |
'vd_resnet50_official' | 'vd_resnet18', num_classes, pretrained=False)`` works; :func:`build_vd_net` builds the
network from any timm CNN.
"""

from vdreid.models.attention import ShallowCAM
from vdreid.models.backbones import Encoder, set_last_stride_one
from vdreid.models.bottleneck import BOTTLENECK_FORMS, InformationBottleneck, gaussian_kl
from vdreid.models.outputs import BranchOutput, VDOutput, gray_view
from vdreid.models.vd_net import BRANCHES, FEATURE_MODES, PRESETS, ROUTINGS, Branch, VDNet, build_vd_net, make_factory
from vdreid.models.weights import PretrainedWeightsError, hub_reachable, load_backbone_file, read_state_dict


def register_models() -> None:
    """Register ``vd_resnet50``, ``vd_resnet50_official`` and ``vd_resnet18`` with torchreid (idempotent)."""
    from vdreid import compat

    for name in PRESETS:
        compat.register_model(name, make_factory(name))


__all__ = [
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
    "register_models",
    "set_last_stride_one",
]
