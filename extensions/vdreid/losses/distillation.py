"""Variational distillation divergences (Tian et al., CVPR 2021): VSD (Eq. 8), VCD (Eq. 15), VML (Eq. 12).

Notation: ``P_v = softmax(logits(v) / T)``, ``P_z = softmax(logits(z) / T)``, ``sg`` = stop-gradient.

Two forms (DESIGN.md, "two recipes"):

* ``form='paper'``: the true KL divergence ``KL(sg(P_teacher) || P_student)`` computed from log-softmax, summed over
  classes and averaged over the batch (PyTorch's ``'batchmean'``).
* ``form='official'``: what the released code computes with ``F.kl_div(softmax(teacher).detach(), softmax(student))``
  (docs/vd-recipes.md section 2): probabilities passed where log-probabilities are expected, arguments swapped, and
  ``reduction='mean'`` over all B x C elements, i.e. ``mean_{b,c}[q * (log q - p)]`` with ``p`` the (detached) teacher
  probabilities and ``q`` the student's. It is written out explicitly here because ``kl_div``'s ``'mean'`` reduction
  is deprecated and will change meaning. It is neither KL(p||q) nor KL(q||p), and is about 1/C the scale of the paper
  form, so weights do not transfer between the forms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vdreid.losses._checks import check_logits_pair, check_temperature, compute_dtype

KL_FORMS = ("paper", "official")


def kl_distill(
    teacher_logits: Tensor,
    student_logits: Tensor,
    T: float = 1.0,
    form: str = "paper",
    detach_teacher: bool = True,
) -> Tensor:
    """Distillation divergence from a teacher's to a student's predictive distribution (VSD Eq. 8, VCD Eq. 15).

    VSD (Eq. 8) uses it with teacher = classifier on the observation ``v`` and student = classifier on the
    representation ``z`` of the same branch; VCD (Eq. 15) with teacher and student from the two views of the shared
    branch.

    Args:
        teacher_logits: (N, C) teacher logits (``P_v`` in VSD).
        student_logits: (N, C) student logits (``P_z`` in VSD), same images in the same order.
        T: temperature applied to both before the softmax (no T^2 rescaling: the paper has none).
        form: ``'paper'``: ``mean_b sum_c P_t (log P_t - log P_s)`` = batch-mean ``KL(sg(P_t) || P_s)``;
            ``'official'``: ``mean_{b,c} q (log q - p)``, p = softmax(teacher/T), q = softmax(student/T)
            (docs/vd-recipes.md section 2).
        detach_teacher: stop the gradient into the teacher (default, as released). With ``False`` the paper form
            also trains the teacher towards the student.

    Returns:
        0-dim tensor (float32 or wider).
    """
    where = "vdreid.losses.kl_distill"
    check_logits_pair("teacher_logits", teacher_logits, "student_logits", student_logits, where)
    check_temperature(T, where)
    if form not in KL_FORMS:
        raise ValueError(f"{where}: `form` must be one of {KL_FORMS}, got {form!r}")
    dt = compute_dtype(teacher_logits)
    t = teacher_logits.to(dt) / T
    s = student_logits.to(dt) / T
    if detach_teacher:
        t = t.detach()
    if form == "paper":
        log_p_t = F.log_softmax(t, dim=1)
        log_p_s = F.log_softmax(s, dim=1)
        # p_t * (log p_t - log p_s); where p_t underflows to 0 the product is 0 (log-probabilities stay finite).
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1).mean()
    # Official: F.kl_div(input=p, target=q) pointwise is q * (log q - p) (xlogy: 0 * log 0 = 0), mean over B*C.
    p = F.softmax(t, dim=1)
    q = F.softmax(s, dim=1)
    return (torch.xlogy(q, q) - q * p).mean()


def js_divergence(logits_a: Tensor, logits_b: Tensor, T: float = 1.0) -> Tensor:
    """Jensen-Shannon divergence between two predictive distributions, the VML objective (Eq. 12).

    ``D_JS = 1/2 KL(P_a || M) + 1/2 KL(P_b || M)``, ``M = (P_a + P_b) / 2``, ``P = softmax(logits / T)``, summed over
    classes and averaged over the batch. Gradients flow into both arguments (mutual learning: neither is a teacher).
    ``log M`` is computed as ``logaddexp(log P_a, log P_b) - log 2`` so it stays finite for peaked distributions.

    Returns:
        0-dim tensor in ``[0, log 2]``.
    """
    where = "vdreid.losses.js_divergence"
    check_logits_pair("logits_a", logits_a, "logits_b", logits_b, where)
    check_temperature(T, where)
    dt = compute_dtype(logits_a)
    log_pa = F.log_softmax(logits_a.to(dt) / T, dim=1)
    log_pb = F.log_softmax(logits_b.to(dt) / T, dim=1)
    log_m = torch.logaddexp(log_pa, log_pb) - math.log(2.0)
    kl_am = (log_pa.exp() * (log_pa - log_m)).sum(dim=1)
    kl_bm = (log_pb.exp() * (log_pb - log_m)).sum(dim=1)
    return (0.5 * (kl_am + kl_bm)).mean()


def vsd_loss(
    v_logits: Tensor, z_logits: Tensor, T: float = 1.0, form: str = "paper", detach_teacher: bool = True
) -> Tensor:
    """Variational Self-Distillation for one branch (Eq. 8): ``KL(sg(P_v) || P_z)``; see :func:`kl_distill`."""
    return kl_distill(v_logits, z_logits, T=T, form=form, detach_teacher=detach_teacher)


def vcd_loss_paper(z_logits_1: Tensor, z_logits_2: Tensor, T: float = 1.0, detach_teacher: bool = True) -> Tensor:
    """Variational Cross-Distillation between two views (Eq. 15, symmetrised as Eq. 10 + 11 suggest):
    ``1/2 [KL(sg(P_z1) || P_z2) + KL(sg(P_z2) || P_z1)]`` (batch-mean KL, log-softmax)."""
    return 0.5 * (
        kl_distill(z_logits_1, z_logits_2, T=T, form="paper", detach_teacher=detach_teacher)
        + kl_distill(z_logits_2, z_logits_1, T=T, form="paper", detach_teacher=detach_teacher)
    )


def vcd_loss_cross(
    v_logits_1: Tensor, z_logits_1: Tensor, v_logits_2: Tensor, z_logits_2: Tensor, T: float = 1.0,
    detach_teacher: bool = True,
) -> Tensor:
    """Variational Cross-Distillation read as *cross-view* distillation (the reading of section 3.2's Theorem 2 and
    of the released code's structure, in true KL form): each view's observation teaches the other view's
    representation, ``1/2 [KL(sg(P_v2) || P_z1) + KL(sg(P_v1) || P_z2)]`` (batch-mean KL). Offered as
    ``vd.term_options.vcd.form cross``; ``docs/vd-recipes.md`` explains the choice."""
    return 0.5 * (
        kl_distill(v_logits_2, z_logits_1, T=T, form="paper", detach_teacher=detach_teacher)
        + kl_distill(v_logits_1, z_logits_2, T=T, form="paper", detach_teacher=detach_teacher)
    )


def vcd_loss_official(
    v_logits_1: Tensor, z_logits_1: Tensor, v_logits_2: Tensor, z_logits_2: Tensor, detach_teacher: bool = True
) -> Tensor:
    """VCD as the released code computes it (docs/vd-recipes.md section 2): from the other view's observation to this
    view's
    representation, ``1/2 kl_off(v_2 -> z_1) + 1/2 kl_off(v_1 -> z_2)`` with the official ``kl_div`` misuse and no
    temperature. With view 1 = gray (``i_ms``) and view 2 = raw (``v_ms``) this is the code's
    ``0.5 kl_div(softmax(v_ms_obs.detach()), softmax(i_ms_rep)) + 0.5 kl_div(softmax(i_ms_obs.detach()),
    softmax(v_ms_rep))``."""
    return 0.5 * (
        kl_distill(v_logits_2, z_logits_1, T=1.0, form="official", detach_teacher=detach_teacher)
        + kl_distill(v_logits_1, z_logits_2, T=1.0, form="official", detach_teacher=detach_teacher)
    )
