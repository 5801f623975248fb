"""Independent restatements of the original authors' networks and losses, written for the tests from the
descriptions of their code (AGW: mangye16/Cross-Modal-Re-ID-baseline ``model.py``/``resnet.py``/``loss.py``; VD: the
released ``reid/models/newresnet.py``/``baseline.py``/``utlis.py``), on torchvision's ResNet rather than timm's, with
the original module names so that their ``state_dict()`` has the original key layout. Not vdreid code.
"""

from __future__ import annotations

import math

import torch
import torchvision
from torch import nn


def _resnet(arch: str, last_conv_stride: int = 1, keep_fc: bool = False) -> nn.Module:
    """torchvision ResNet with layer4's stride set to ``last_conv_stride``; AGW's own ResNet has no avgpool/fc."""
    net = getattr(torchvision.models, arch)(weights=None)
    block = net.layer4[0]
    (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (last_conv_stride, last_conv_stride)
    block.downsample[0].stride = (last_conv_stride, last_conv_stride)
    if not keep_fc:
        del net.fc
        del net.avgpool
    return net


# ------------------------------------------------------------------------------------------------ AGW
class Normalize(nn.Module):
    def forward(self, x):
        return x.div(x.pow(2).sum(1, keepdim=True).pow(0.5))  # no eps (AGW model.py Normalize)


class Non_local(nn.Module):  # noqa: N801 - AGW's name
    """inter_channels = reduc_ratio // reduc_ratio = 1; dot product / N; W = conv + BN with zero weight and bias."""

    def __init__(self, in_channels, reduc_ratio=2):
        super().__init__()
        self.in_channels = in_channels
        self.inter_channels = reduc_ratio // reduc_ratio
        self.g = nn.Sequential(nn.Conv2d(in_channels, self.inter_channels, 1, 1, 0))
        self.W = nn.Sequential(nn.Conv2d(self.inter_channels, in_channels, 1, 1, 0), nn.BatchNorm2d(in_channels))
        nn.init.constant_(self.W[1].weight, 0.0)
        nn.init.constant_(self.W[1].bias, 0.0)
        self.theta = nn.Conv2d(in_channels, self.inter_channels, 1, 1, 0)
        self.phi = nn.Conv2d(in_channels, self.inter_channels, 1, 1, 0)

    def forward(self, x):
        b = x.size(0)
        g_x = self.g(x).view(b, self.inter_channels, -1).permute(0, 2, 1)
        theta_x = self.theta(x).view(b, self.inter_channels, -1).permute(0, 2, 1)
        phi_x = self.phi(x).view(b, self.inter_channels, -1)
        f = torch.matmul(theta_x, phi_x)
        f_div_c = f / f.size(-1)
        y = torch.matmul(f_div_c, g_x).permute(0, 2, 1).contiguous().view(b, self.inter_channels, *x.size()[2:])
        return self.W(y) + x


class visible_module(nn.Module):  # noqa: N801
    def __init__(self, arch):
        super().__init__()
        self.visible = _resnet(arch)

    def forward(self, x):
        v = self.visible
        return v.maxpool(v.relu(v.bn1(v.conv1(x))))


class thermal_module(nn.Module):  # noqa: N801
    def __init__(self, arch):
        super().__init__()
        self.thermal = _resnet(arch)

    def forward(self, x):
        t = self.thermal
        return t.maxpool(t.relu(t.bn1(t.conv1(x))))


class base_resnet(nn.Module):  # noqa: N801
    def __init__(self, arch):
        super().__init__()
        self.base = _resnet(arch)
        self.base.avgpool = nn.AdaptiveAvgPool2d((1, 1))


class embed_net(nn.Module):  # noqa: N801
    """AGW's network: ``net(x1, x2, modal)``; train -> (x_pool, logits); eval -> (l2n(x_pool), l2n(feat))."""

    def __init__(self, class_num, no_local="on", gm_pool="on", arch="resnet50"):
        super().__init__()
        self.thermal_module = thermal_module(arch)
        self.visible_module = visible_module(arch)
        self.base_resnet = base_resnet(arch)
        self.non_local = no_local
        layers = [len(getattr(self.base_resnet.base, f"layer{i}")) for i in range(1, 5)]
        self.nl_idx = []
        if no_local == "on":
            non_layers = [0, 2, 3, 0]
            for i, ch in enumerate(self._channels(arch)):
                setattr(self, f"NL_{i + 1}", nn.ModuleList([Non_local(ch) for _ in range(non_layers[i])]))
                self.nl_idx.append(sorted([layers[i] - (j + 1) for j in range(non_layers[i])]))
        pool_dim = 2048 if arch in ("resnet50", "resnet101") else 512
        self.l2norm = Normalize()
        self.bottleneck = nn.BatchNorm1d(pool_dim)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(pool_dim, class_num, bias=False)
        nn.init.normal_(self.bottleneck.weight, 1.0, 0.01)
        nn.init.zeros_(self.bottleneck.bias)
        nn.init.normal_(self.classifier.weight, 0, 0.001)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.gm_pool = gm_pool

    @staticmethod
    def _channels(arch):
        return (256, 512, 1024, 2048) if arch in ("resnet50", "resnet101") else (64, 128, 256, 512)

    def features(self, x1, x2, modal=0):
        if modal == 0:
            x = torch.cat((self.visible_module(x1), self.thermal_module(x2)), 0)
        elif modal == 1:
            x = self.visible_module(x1)
        else:
            x = self.thermal_module(x2)
        base = self.base_resnet.base
        for i in range(4):
            layer = getattr(base, f"layer{i + 1}")
            idx = self.nl_idx[i] if self.non_local == "on" else []
            counter = 0
            for j in range(len(layer)):
                x = layer[j](x)
                if counter < len(idx) and j == idx[counter]:
                    x = getattr(self, f"NL_{i + 1}")[counter](x)
                    counter += 1
        if self.gm_pool == "on":
            b, c, _, _ = x.shape
            x_pool = (torch.mean(x.view(b, c, -1) ** 3.0, dim=-1) + 1e-12) ** (1 / 3.0)
        else:
            x_pool = self.avgpool(x).view(x.size(0), x.size(1))
        return x_pool, self.bottleneck(x_pool)

    def forward(self, x1, x2, modal=0):
        x_pool, feat = self.features(x1, x2, modal)
        if self.training:
            return x_pool, self.classifier(feat)
        return self.l2norm(x_pool), self.l2norm(feat)


def wrt_reference(features: torch.Tensor, labels: torch.Tensor, normalize_feature: bool = False) -> float:
    """TripletLoss_WRT restated anchor by anchor in float64 Python arithmetic (AGW loss.py)."""
    x = features.detach().double()
    if normalize_feature:
        x = x / (x.norm(dim=1, keepdim=True) + 1e-12)
    n = x.shape[0]
    y = labels.tolist()
    sq = [float((x[i] * x[i]).sum()) for i in range(n)]
    total = 0.0
    for i in range(n):
        d = [math.sqrt(max(sq[i] + sq[j] - 2.0 * float((x[i] * x[j]).sum()), 1e-12)) for j in range(n)]
        pos = [j for j in range(n) if y[j] == y[i]]  # the anchor itself included
        neg = [j for j in range(n) if y[j] != y[i]]
        m_pos = max(d[j] for j in pos)  # max over the row of d * is_pos (>= 0)
        z_pos = sum(math.exp(d[j] - m_pos) for j in pos) + 1e-6
        fp = sum(d[j] * math.exp(d[j] - m_pos) / z_pos for j in pos)
        m_neg = 0.0  # max over the row of (-d * is_neg) * is_neg: positives give 0, negatives < 0
        z_neg = sum(math.exp(-d[j] - m_neg) for j in neg) + 1e-6
        cn = sum(d[j] * math.exp(-d[j] - m_neg) / z_neg for j in neg)
        total += math.log1p(math.exp(-(cn - fp)))
    return total / n


def ce_reference(logits: torch.Tensor, labels: torch.Tensor, eps: float = 0.0) -> float:
    """Cross-entropy from its definition, optional label smoothing: mean_b sum_c -[(1-eps) y + eps/K] log p."""
    z = logits.detach().double()
    k = z.shape[1]
    total = 0.0
    for b in range(z.shape[0]):
        row = z[b].tolist()
        mx = max(row)
        lse = mx + math.log(sum(math.exp(v - mx) for v in row))
        logp = [v - lse for v in row]
        total += -sum(((1 - eps) * (c == int(labels[b])) + eps / k) * logp[c] for c in range(k))
    return total / z.shape[0]


def batch_hard_triplet_reference(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> float:
    """Batch-hard triplet loss (Hermans et al.): mean_i max(0, max_pos d - min_neg d + margin), Euclidean d with
    the 1e-12 clamp, the anchor among its positives."""
    x = features.detach().double()
    n = x.shape[0]
    y = labels.tolist()
    total = 0.0
    for i in range(n):
        d = [math.sqrt(max(float(((x[i] - x[j]) ** 2).sum()), 1e-12)) for j in range(n)]
        ap = max(d[j] for j in range(n) if y[j] == y[i])
        an = min(d[j] for j in range(n) if y[j] != y[i])
        total += max(0.0, ap - an + margin)
    return total / n


# ------------------------------------------------------------------------------------------------ released VD code
class CAM_Module(nn.Module):  # noqa: N801
    def __init__(self, in_dim):
        super().__init__()
        self.channel_in = in_dim
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.size()
        q = x.view(b, c, -1)
        energy = torch.bmm(q, q.permute(0, 2, 1))
        energy = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        out = torch.bmm(torch.softmax(energy, dim=-1), q).view(b, c, h, w)
        return self.gamma * out + x


class ShallowCAM(nn.Module):
    def __init__(self, feature_dim):
        super().__init__()
        self._cam_module = CAM_Module(feature_dim)

    def forward(self, x):
        return self._cam_module(x)


class Baseline(nn.Module):
    """Released encoder: ResNet-50 (with its unused ImageNet fc, last stride 1), cams before layer2/3/4, GAP, BNNeck,
    classifier ``Sequential(Linear)``; train -> (logits, feat), eval -> (global_feat, feat)."""

    def __init__(self, num_classes, num_features=2048):
        super().__init__()
        self.cam_256 = ShallowCAM(256)
        self.cam_512 = ShallowCAM(512)
        self.cam_1024 = ShallowCAM(1024)
        self.base = _resnet("resnet50", keep_fc=True)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.bottleneck = nn.BatchNorm1d(num_features)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Sequential(nn.Linear(num_features, num_classes))

    def forward(self, x):
        for name, module in self.base._modules.items():
            if name == "avgpool":
                break
            x = {"layer2": self.cam_256, "layer3": self.cam_512, "layer4": self.cam_1024}.get(name, nn.Identity())(x)
            x = module(x)
        global_feat = self.gap(x).flatten(1)
        feat = self.bottleneck(global_feat)
        return (self.classifier(feat), feat) if self.training else (global_feat, feat)


class ChannelCompress(nn.Module):
    def __init__(self, in_ch=2048, out_ch=512):
        super().__init__()
        self.model = nn.Sequential(
            nn.Linear(in_ch, 1000), nn.BatchNorm1d(1000), nn.ReLU(),
            nn.Linear(1000, 500), nn.BatchNorm1d(500), nn.ReLU(), nn.Linear(500, out_ch),
        )

    def forward(self, x):
        return self.model(x)


class VIB(nn.Module):
    def __init__(self, in_ch=2048, z_dim=256, num_class=395):
        super().__init__()
        out_ch = z_dim * 2
        self.bottleneck = ChannelCompress(in_ch, out_ch)
        self.classifier = nn.Sequential(
            nn.Linear(out_ch, out_ch // 2), nn.BatchNorm1d(out_ch // 2), nn.LeakyReLU(0.1), nn.Dropout(0.5),
            nn.Linear(out_ch // 2, num_class),
        )

    def forward(self, v):
        z = self.bottleneck(v)
        return self.classifier(z), z


def to_gray(x):
    g = 0.2989 * x[:, 0:1] + 0.5870 * x[:, 1:2] + 0.1140 * x[:, 2:3]
    return torch.cat([g, g, g], dim=1)


class ft_net(nn.Module):  # noqa: N801
    def __init__(self, num_classes, z_dim=256):
        super().__init__()
        self.IR_backbone = Baseline(num_classes)
        self.IR_Bottleneck = VIB(2048, z_dim, num_classes)
        self.RGB_backbone = Baseline(num_classes)
        self.RGB_Bottleneck = VIB(2048, z_dim, num_classes)
        self.shared_backbone = Baseline(num_classes)
        self.shared_Bottleneck = VIB(2048, z_dim, num_classes)

    def extract(self, x):
        """The released extract_feature.py feature: cat of i_obs, i_ms_obs, v_obs, v_ms_obs post-BN (unnormalised)."""
        gray = to_gray(x)
        v_obs = self.RGB_backbone(x)[1]
        i_ms_obs = self.shared_backbone(gray)[1]
        v_ms_obs = self.shared_backbone(x)[1]
        i_obs = self.IR_backbone(gray)[1]
        return torch.cat([i_obs, i_ms_obs, v_obs, v_ms_obs], dim=1)


# ------------------------------------------------------------------------------------------------ helpers
@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm affine parameters and running statistics (and non-zero attention gammas), so that the zero
    initialisations (non-local W-BN, CAM gamma) do not hide a wrong computation."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.5)
            if m.bias.requires_grad:
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        if isinstance(m, CAM_Module):
            m.gamma.fill_(float(torch.rand(1, generator=gen)) * 1e-3)
    return module
