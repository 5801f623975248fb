"""Independent restatement of DEEN's network and losses (ZYK100/LLCM ``DEEN/model.py``, ``DEEN/loss.py``,
``DEEN/train.py``, ``DEEN/test.py``), written for the tests from the authors' code's behaviour, on torchvision's
ResNet (the AGW restatement's stems and base, tests/original_reference.py), with the original module names so that
its ``state_dict()`` has the original key layout. Not vdreid code: the loops, ``view`` calls and per-identity lists
of the original are kept.

The authors' ``embed_net`` always builds ResNet-50 widths whatever its ``arch`` argument; here ``arch='resnet18'``
gives the same network with ResNet-18's widths (every MFA / DEE width taken from the stage it follows), so that
CPU tests can check the computation on a small network. ``arch='resnet50'`` is the published network.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from original_reference import Normalize, base_resnet, thermal_module, visible_module
from torch import nn

# channels of (stem, layer1, layer2, layer3, layer4)
WIDTHS = {"resnet50": (64, 256, 512, 1024, 2048), "resnet18": (64, 64, 128, 256, 512)}


def weights_init_kaiming(m):
    name = m.__class__.__name__
    if "Conv" in name:
        nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_in")
    elif "Linear" in name:
        nn.init.kaiming_normal_(m.weight.data, a=0, mode="fan_out")
        nn.init.zeros_(m.bias.data)
    elif "BatchNorm1d" in name:
        nn.init.normal_(m.weight.data, 1.0, 0.01)
        nn.init.zeros_(m.bias.data)


class DEE_module(nn.Module):  # noqa: N801 - DEEN's name
    def __init__(self, channel):
        super().__init__()
        q = channel // 4
        for b in (1, 2):
            for d in (1, 2, 3):
                conv = nn.Conv2d(channel, q, kernel_size=3, stride=1, padding=d, bias=False, dilation=d)
                conv.apply(weights_init_kaiming)
                setattr(self, f"FC{b}{d}", conv)
            fuse = nn.Conv2d(q, channel, kernel_size=1)
            fuse.apply(weights_init_kaiming)
            setattr(self, f"FC{b}", fuse)
        self.dropout = nn.Dropout(p=0.01)

    def forward(self, x):
        x1 = self.FC1(F.relu((self.FC11(x) + self.FC12(x) + self.FC13(x)) / 3))
        x2 = self.FC2(F.relu((self.FC21(x) + self.FC22(x) + self.FC23(x)) / 3))
        return self.dropout(torch.cat((x, x1, x2), 0))


class CNL(nn.Module):
    def __init__(self, high_dim, low_dim, flag=0):
        super().__init__()
        self.high_dim, self.low_dim = high_dim, low_dim
        s = 1 if flag == 0 else 2
        self.g = nn.Conv2d(low_dim, low_dim, kernel_size=1, stride=1, padding=0)
        self.theta = nn.Conv2d(high_dim, low_dim, kernel_size=1, stride=1, padding=0)
        self.phi = nn.Conv2d(low_dim, low_dim, kernel_size=1, stride=s, padding=0)
        self.W = nn.Sequential(nn.Conv2d(low_dim, high_dim, kernel_size=1, stride=s, padding=0),
                               nn.BatchNorm2d(high_dim))
        nn.init.constant_(self.W[1].weight, 0.0)
        nn.init.constant_(self.W[1].bias, 0.0)

    def forward(self, x_h, x_l):
        B = x_h.size(0)
        g_x = self.g(x_l).view(B, self.low_dim, -1)
        theta_x = self.theta(x_h).view(B, self.low_dim, -1)
        phi_x = self.phi(x_l).view(B, self.low_dim, -1).permute(0, 2, 1)
        energy = torch.matmul(theta_x, phi_x)
        y = torch.matmul(energy / energy.size(-1), g_x).view(B, self.low_dim, *x_l.size()[2:])
        return self.W(y) + x_h


class PNL(nn.Module):
    def __init__(self, high_dim, low_dim, reduc_ratio=2):
        super().__init__()
        self.high_dim, self.low_dim, self.reduc_ratio = high_dim, low_dim, reduc_ratio
        r = low_dim // reduc_ratio
        self.g = nn.Conv2d(low_dim, r, kernel_size=1, stride=1, padding=0)
        self.theta = nn.Conv2d(high_dim, r, kernel_size=1, stride=1, padding=0)
        self.phi = nn.Conv2d(low_dim, r, kernel_size=1, stride=1, padding=0)
        self.W = nn.Sequential(nn.Conv2d(r, high_dim, kernel_size=1, stride=1, padding=0), nn.BatchNorm2d(high_dim))
        nn.init.constant_(self.W[1].weight, 0.0)
        nn.init.constant_(self.W[1].bias, 0.0)

    def forward(self, x_h, x_l):
        B = x_h.size(0)
        g_x = self.g(x_l).view(B, self.low_dim, -1).permute(0, 2, 1)
        theta_x = self.theta(x_h).view(B, self.low_dim, -1).permute(0, 2, 1)
        phi_x = self.phi(x_l).view(B, self.low_dim, -1)
        energy = torch.matmul(theta_x, phi_x)
        y = torch.matmul(energy / energy.size(-1), g_x).permute(0, 2, 1).contiguous()
        y = y.view(B, self.low_dim // self.reduc_ratio, *x_h.size()[2:])
        return self.W(y) + x_h


class MFA_block(nn.Module):  # noqa: N801
    def __init__(self, high_dim, low_dim, flag):
        super().__init__()
        self.CNL = CNL(high_dim, low_dim, flag)
        self.PNL = PNL(high_dim, low_dim)

    def forward(self, x, x0):
        return self.PNL(self.CNL(x, x0), x0)


class embed_net(nn.Module):  # noqa: N801
    """DEEN's network: train ``net(x1, x2)`` -> (x_pool (3N, D), logits, loss_ort); eval ``net(x, x, modal)`` ->
    (l2(x_pool), l2(feat)), both (3N, D)."""

    def __init__(self, class_num, dataset="sysu", arch="resnet50"):
        super().__init__()
        self.thermal_module = thermal_module(arch)
        self.visible_module = visible_module(arch)
        self.base_resnet = base_resnet(arch)
        c0, c1, c2, c3, c4 = WIDTHS[arch]
        self.dataset = dataset
        if dataset == "regdb":
            pool_dim = c3
            self.DEE = DEE_module(c2)
            self.MFA1 = MFA_block(c1, c0, 0)
            self.MFA2 = MFA_block(c2, c1, 1)
        else:
            pool_dim = c4
            self.DEE = DEE_module(c3)
            self.MFA1 = MFA_block(c1, c0, 0)
            self.MFA2 = MFA_block(c2, c1, 1)
            self.MFA3 = MFA_block(c3, c2, 1)
        self.bottleneck = nn.BatchNorm1d(pool_dim)
        self.bottleneck.bias.requires_grad_(False)
        self.bottleneck.apply(weights_init_kaiming)
        self.classifier = nn.Linear(pool_dim, class_num, bias=False)
        nn.init.normal_(self.classifier.weight, 0, 0.001)
        self.l2norm = Normalize()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))

    def forward(self, x1, x2, modal=0):
        if modal == 0:
            x = torch.cat((self.visible_module(x1), self.thermal_module(x2)), 0)
        elif modal == 1:
            x = self.visible_module(x1)
        else:
            x = self.thermal_module(x2)
        base = self.base_resnet.base
        x_ = x
        x = base.layer1(x_)
        x_ = self.MFA1(x, x_)
        x = base.layer2(x_)
        x_ = self.MFA2(x, x_)
        if self.dataset == "regdb":
            x_ = self.DEE(x_)
            x = base.layer3(x_)
        else:
            x = base.layer3(x_)
            x_ = self.MFA3(x, x_)
            x_ = self.DEE(x_)
            x = base.layer4(x_)
        xp = self.avgpool(x)
        x_pool = xp.view(xp.size(0), xp.size(1))
        feat = self.bottleneck(x_pool)
        if self.training:
            xps = xp.view(xp.size(0), xp.size(1), xp.size(2)).permute(0, 2, 1)
            xp1, xp2, xp3 = torch.chunk(xps, 3, 0)
            xpss = torch.cat((xp2, xp3), 1)
            loss_ort = torch.triu(torch.bmm(xpss, xpss.permute(0, 2, 1)), diagonal=1).sum() / (xp.size(0))
            return x_pool, self.classifier(feat), loss_ort
        return self.l2norm(x_pool), self.l2norm(feat)


# ------------------------------------------------------------------------------------------------ losses
def pdist_torch(emb1, emb2):
    m, n = emb1.shape[0], emb2.shape[0]
    emb1_pow = torch.pow(emb1, 2).sum(dim=1, keepdim=True).expand(m, n)
    emb2_pow = torch.pow(emb2, 2).sum(dim=1, keepdim=True).expand(n, m).t()
    dist_mtx = (emb1_pow + emb2_pow).addmm_(emb1, emb2.t(), beta=1, alpha=-2)
    return dist_mtx.clamp(min=1e-12).sqrt()


class CPMLoss(nn.Module):
    """DEEN's CPMLoss: per-identity centres of four blocks, a mask built from the sorted unique labels, per-row
    selections, two detached 'negatives', margin 0.2 whatever ``margin`` says."""

    def __init__(self, margin=0.2):
        super().__init__()
        self.margin = margin
        self.ranking_loss = nn.MarginRankingLoss(margin=0.2)

    def forward(self, inputs, targets):
        fts = torch.chunk(inputs, 4, 0)
        lb1 = torch.chunk(targets, 4, 0)[0]
        lbs = lb1.unique()
        n = lbs.size(0)
        centers = [torch.cat([torch.mean(c, dim=0, keepdim=True) for c in f.chunk(n, 0)]) for f in fts]
        c1, c2, c3, c4 = centers
        d13, d23, d33, d11 = pdist_torch(c1, c3), pdist_torch(c2, c3), pdist_torch(c3, c3), pdist_torch(c1, c1)
        d14, d24, d44, d22 = pdist_torch(c1, c4), pdist_torch(c2, c4), pdist_torch(c4, c4), pdist_torch(c2, c2)
        mask = lbs.expand(n, n).eq(lbs.expand(n, n).t())
        ap123, an123, an33, an11, ap124, an124, an44, an22 = ([] for _ in range(8))
        for i in range(n):
            ap123.append(d23[i][mask[i]].max().unsqueeze(0))
            an123.append(d13[i][mask[i]].min().unsqueeze(0))
            an33.append(d33[i][mask[i] == 0].min().unsqueeze(0))
            an11.append(d11[i][mask[i] == 0].min().unsqueeze(0))
            ap124.append(d14[i][mask[i]].max().unsqueeze(0))
            an124.append(d24[i][mask[i]].min().unsqueeze(0))
            an44.append(d44[i][mask[i] == 0].min().unsqueeze(0))
            an22.append(d22[i][mask[i] == 0].min().unsqueeze(0))
        ap123, an123, an33, an11 = torch.cat(ap123), torch.cat(an123).detach(), torch.cat(an33), torch.cat(an11)
        ap124, an124, an44, an22 = torch.cat(ap124), torch.cat(an124).detach(), torch.cat(an44), torch.cat(an22)
        one = torch.ones_like(an123)
        rl = self.ranking_loss
        loss_123 = rl(an123, ap123, one) + (rl(an33, ap123, one) + rl(an11, ap123, one)) * 0.5
        loss_124 = rl(an124, ap124, one) + (rl(an44, ap124, one) + rl(an22, ap124, one)) * 0.5
        return (loss_123 + loss_124) / 2


class OriTripletLoss(nn.Module):
    def __init__(self, margin=0.3):
        super().__init__()
        self.ranking_loss = nn.MarginRankingLoss(margin=margin)

    def forward(self, inputs, targets):
        n = inputs.size(0)
        dist = torch.pow(inputs, 2).sum(dim=1, keepdim=True).expand(n, n)
        dist = (dist + dist.t()).addmm_(inputs, inputs.t(), beta=1, alpha=-2).clamp(min=1e-12).sqrt()
        mask = targets.expand(n, n).eq(targets.expand(n, n).t())
        dist_ap = torch.cat([dist[i][mask[i]].max().unsqueeze(0) for i in range(n)])
        dist_an = torch.cat([dist[i][mask[i] == 0].min().unsqueeze(0) for i in range(n)])
        return self.ranking_loss(dist_an, dist_ap, torch.ones_like(dist_an))


def deen_train_loss(net, input1, input2, label1, label2, lambda_1=0.8, lambda_2=0.01):
    """One step of DEEN's train.py: returns (total, {'ce', 'triplet', 'cpm', 'ort'}) with the weights applied."""
    labs = torch.cat((label1, label2, label1, label2), 0)
    labels = torch.cat((label1, label2, label1, label2, label1, label2), 0)
    feat1, out1, loss_ort = net(input1, input2)
    loss_id = nn.CrossEntropyLoss()(out1, labels)
    loss_tri = OriTripletLoss(margin=0.3)(feat1, labels)
    ft1, ft2, ft3 = torch.chunk(feat1, 3, 0)
    cpm = CPMLoss(margin=0.2)
    loss_cpm = (cpm(torch.cat((ft1, ft2), 0), labs) + cpm(torch.cat((ft1, ft3), 0), labs)) * lambda_1
    loss_ort = loss_ort * lambda_2
    terms = {"ce": loss_id, "triplet": loss_tri, "cpm": loss_cpm, "ort": loss_ort}
    return loss_id + loss_tri + loss_cpm + loss_ort, terms


# ------------------------------------------------------------------------------------------------ test features
def deen_distmats(net, query, gallery, q_modal, g_modal, flip=False):
    """DEEN's test.py similarities (train.py without ``flip``): per image the six L2-normalised parts (pool and BN
    feature of the three embeddings, flip: the sum over the image and its mirror), ``distmat7`` = the sum of the six
    inner-product matrices, ``distmat8`` = 0.1 * (pool ones) + 0.9 * (BN ones). numpy float64."""

    def parts(x, modal):
        with torch.no_grad():
            pool, fc = net(x, x, modal)
            if flip:
                xf = x.index_select(3, torch.arange(x.size(3) - 1, -1, -1).long())
                pool2, fc2 = net(xf, xf, modal)
                pool, fc = pool + pool2, fc + fc2
        n = x.size(0)
        return [t[k * n:(k + 1) * n].double().numpy() for k in range(3) for t in (pool, fc)]  # f1 .. f6

    q, g = parts(query, q_modal), parts(gallery, g_modal)
    d = [np.matmul(q[i], np.transpose(g[i])) for i in range(6)]
    a = 0.1
    distmat7 = d[0] + d[2] + d[4] + d[1] + d[3] + d[5]
    distmat8 = a * (d[0] + d[2] + d[4]) + (1 - a) * (d[1] + d[3] + d[5])
    return distmat7, distmat8, d[0], d[1]


# ------------------------------------------------------------------------------------------------ sampler, erasing
def identity_sampler_batches(n_color: int, n_thermal: int, batch_size: int = 6, num_pos: int = 4) -> int:
    """Batches DEEN's epoch runs (utils.py IdentitySampler + DataLoader(batch_size * num_pos, drop_last=True)): the
    sampler yields ``(int(N / (batch_size * num_pos)) + 1) * batch_size * num_pos`` indices (its __len__ = N is not
    what the loader iterates), cut into full batches."""
    N = max(n_color, n_thermal)
    indices = (int(N / (batch_size * num_pos)) + 1) * batch_size * num_pos
    return indices // (batch_size * num_pos)


class RandomErasing:
    """DEEN's random_erasing.py (Zhong et al.): with probability p, up to 100 tries of an area in [sl, sh] * H * W and
    an aspect ratio in [r1, 1 / r1]; the first window that fits is filled with ``mean`` per channel."""

    def __init__(self, probability=0.5, sl=0.2, sh=0.8, r1=0.3, mean=(0.4914, 0.4822, 0.4465)):
        self.probability, self.mean, self.sl, self.sh, self.r1 = probability, mean, sl, sh, r1

    def __call__(self, img):
        import math
        import random

        if random.uniform(0, 1) > self.probability:
            return img
        for _ in range(100):
            area = img.size()[1] * img.size()[2]
            target_area = random.uniform(self.sl, self.sh) * area
            aspect_ratio = random.uniform(self.r1, 1 / self.r1)
            h = int(round(math.sqrt(target_area * aspect_ratio)))
            w = int(round(math.sqrt(target_area / aspect_ratio)))
            if w < img.size()[2] and h < img.size()[1]:
                x1 = random.randint(0, img.size()[1] - h)
                y1 = random.randint(0, img.size()[2] - w)
                for c in range(img.size()[0]):
                    img[c, x1:x1 + h, y1:y1 + w] = self.mean[c]
                return img
        return img
