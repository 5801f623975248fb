"""Independent restatement of what CAJ's code (mangye16/Cross-Modal-Re-ID-baseline, ICCV21_CAJ/) computes, written for
the tests from that code's behaviour and checked against it by running the authors' files: its adaptive weighted
triplet (loss.py TripletLoss_ADP and softmax_weights, pdist_torch), its channel augmentations (ChannelAug.py
ChannelAdapGray and ChannelRandomErasing, data_loader.py ChannelExchange), the batches of its IdentitySampler, its
learning-rate rule and its flip test feature (testa.py). Loops and plain Python where the original vectorises, so the
comparison is against another computation, not our code."""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def adp_reference(feat: torch.Tensor, labels: torch.Tensor, alpha: float = 1, gamma: float = 1,
                  square: int = 1) -> torch.Tensor:
    """TripletLoss_ADP.forward, restated row by row (float64 recommended)."""
    n = feat.shape[0]
    sq = (feat * feat).sum(1)
    rows_fp, rows_cn = [], []
    for i in range(n):
        d = (sq[i] + sq - 2 * (feat @ feat[i])).clamp(min=1e-12).sqrt()  # pdist_torch's row i
        pos = (labels == labels[i]).to(feat.dtype)
        neg = 1.0 - pos
        # softmax_weights(dist_ap * alpha, is_pos): the "max" is over (alpha * d * pos) * pos of the row
        ap = d * pos
        m = torch.max(ap * alpha * pos)
        e = torch.exp(ap * alpha - m) * pos
        w_ap = e / (e.sum() + 1e-6)
        # softmax_weights(-dist_an * alpha, is_neg): max over (-alpha d * neg) * neg, 0 when there are positives
        an = d * neg
        m = torch.max(-an * alpha * neg)
        e = torch.exp(-an * alpha - m) * neg
        w_an = e / (e.sum() + 1e-6)
        rows_fp.append((ap * w_ap).sum())
        rows_cn.append((an * w_an).sum())
    fp, cn = torch.stack(rows_fp), torch.stack(rows_cn)
    total = feat.new_zeros(())
    for f, c in zip(fp, cn):
        if square == 0:
            x, y = gamma * (c - f), 1.0
        else:
            x = torch.clamp(gamma * (f - c) ** 2, max=88.0)
            y = -1.0 if bool(f > c) else 1.0
        total = total + torch.log1p(torch.exp(-y * x))  # SoftMarginLoss: log(1 + exp(-y x))
    return total / n


def channel_exchange_reference(img: torch.Tensor) -> torch.Tensor:
    """data_loader.py ChannelExchange(gray=2) on a (3, H, W) tensor: randint(0, 2) picks the channel copied to all."""
    img = img.clone()
    idx = random.randint(0, 2)
    for c in range(3):
        img[c] = img[idx].clone()
    return img


def channel_adap_gray_reference(img: torch.Tensor, probability: float = 0.5) -> torch.Tensor:
    """ChannelAug.py ChannelAdapGray: randint(0, 3); 0-2 copy that channel; 3: keep when uniform > p, else luma."""
    img = img.clone()
    idx = random.randint(0, 3)
    if idx < 3:
        src = img[idx].clone()
        for c in range(3):
            img[c] = src
    elif not random.uniform(0, 1) > probability:
        g = 0.2989 * img[0] + 0.5870 * img[1] + 0.1140 * img[2]
        for c in range(3):
            img[c] = g
    return img


def channel_erasing_reference(img: torch.Tensor, probability: float = 0.5, sl: float = 0.02, sh: float = 0.4,
                              r1: float = 0.3, mean=(0.4914, 0.4822, 0.4465)) -> torch.Tensor:
    """ChannelAug.py ChannelRandomErasing: up to 100 tries at a rectangle of area sl..sh and aspect r1..1/r1."""
    img = img.clone()
    if random.uniform(0, 1) > probability:
        return img
    for _ in range(100):
        area = img.shape[1] * img.shape[2]
        target = random.uniform(sl, sh) * area
        aspect = random.uniform(r1, 1 / r1)
        h = int(round(math.sqrt(target * aspect)))
        w = int(round(math.sqrt(target / aspect)))
        if w < img.shape[2] and h < img.shape[1]:
            x1 = random.randint(0, img.shape[1] - h)
            y1 = random.randint(0, img.shape[2] - w)
            for c in range(3):
                img[c, x1 : x1 + h, y1 : y1 + w] = mean[c]
            return img
    return img


def identity_sampler_batches(num_color: int, num_thermal: int, batch_size: int = 8, num_pos: int = 4) -> int:
    """utils.py IdentitySampler + DataLoader(batch_size * num_pos, drop_last=True): loader batches per epoch."""
    n = max(num_color, num_thermal)
    index_len = (int(n / (batch_size * num_pos)) + 1) * batch_size * num_pos
    return index_len // (batch_size * num_pos)


def caj_lr(base: float, epoch: int) -> tuple[float, float]:
    """train_ext.py adjust_learning_rate: (backbone lr, BNNeck/classifier lr) of 0-based ``epoch``."""
    if epoch < 10:
        lr = base * (epoch + 1) / 10
    elif epoch < 20:
        lr = base
    elif epoch < 50:
        lr = base * 0.1
    else:
        lr = base * 0.01
    return 0.1 * lr, lr


def testa_feature(f: torch.Tensor, f_flip: torch.Tensor) -> np.ndarray:
    """testa.py: the model returns l2norm(feature) for the image and its flip; average, then L2-normalise."""
    def l2(x: torch.Tensor) -> torch.Tensor:
        return x / torch.norm(x, 2, 1, keepdim=True)  # the model's Normalize(2)

    avg = (l2(f) + l2(f_flip)) / 2
    return (avg / torch.norm(avg, p=2, dim=1, keepdim=True)).numpy()


def dataset_pipelines(height: int = 288, width: int = 144) -> dict[str, object]:
    """data_loader.py SYSUData / RegDBData (identical): the three train pipelines their ``__getitem__`` applies to a
    resized uint8 (H, W, 3) array: ``transform_color`` (visible view 1), ``transform_color1`` (visible view 2, the
    channel-exchanged one) and ``transform_thermal``; torchvision's Pad, RandomCrop, flip, ToTensor and Normalize with
    the restated channel operations above."""
    from torchvision import transforms as T

    head = [T.ToPILImage(), T.Pad(10), T.RandomCrop((height, width)), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]), channel_erasing_reference]
    return {
        "transform_color": T.Compose(head),
        "transform_color1": T.Compose([*head, channel_exchange_reference]),
        "transform_thermal": T.Compose([*head, channel_adap_gray_reference]),
    }


def prepared_image(arr: np.ndarray, height: int = 288, width: int = 144) -> np.ndarray:
    """pre_process_sysu.py / RegDBData / TestData: every image is resized once, ``img.resize((144, 288),
    Image.ANTIALIAS)`` (PIL's LANCZOS filter), and kept as a uint8 array."""
    from PIL import Image

    return np.array(Image.fromarray(arr).resize((width, height), Image.LANCZOS))


def test_pipeline(height: int = 288, width: int = 144):
    """train_ext.py / testa.py ``transform_test`` on a prepared array: ToPILImage, Resize (a no-op at that size),
    ToTensor, Normalize."""
    from torchvision import transforms as T

    return T.Compose([T.ToPILImage(), T.Resize((height, width)), T.ToTensor(),
                      T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
