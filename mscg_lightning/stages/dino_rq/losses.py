"""Self-distillation losses of RQ-DINO: DINO (CLS), iBOT (masked patches) and KoLeo.

Collective operations run only when a process group exists, so the same code serves a single
process and DDP. (DINOv2's iBOT Sinkhorn all-reduces unconditionally and crashes without one.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mscg_lightning.artifacts import is_distributed

Centering = Literal["centering", "sinkhorn_knopp"]


def all_reduce_(tensor: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    """All-reduce `tensor` in place across ranks when distributed; a no-op otherwise."""
    if is_distributed():
        dist.all_reduce(tensor, op=op)
    return tensor


@torch.no_grad()
def sinkhorn_knopp(logits: Tensor, temp: float, n_iterations: int = 3) -> Tensor:
    """Sinkhorn-Knopp normalisation of teacher logits into soft assignments.

    Args:
        logits: `[N, K]` teacher logits (N samples on this rank, K prototypes).
        temp: teacher temperature.
        n_iterations: alternating row/column normalisations.

    Returns:
        `[N, K]` assignments whose rows sum to 1 and whose prototype marginals are uniform over
        all samples of all ranks.
    """
    logits = logits.float()
    # A global constant shift cancels in the first normalisation but avoids exp() overflow.
    shift = all_reduce_(logits.max().clone(), op=dist.ReduceOp.MAX)
    q = torch.exp((logits - shift) / temp).t()  # [K, N]
    n_prototypes = q.shape[0]
    n_samples = all_reduce_(torch.tensor(float(q.shape[1]), device=q.device))
    # Sums are clamped: at a sharp temperature whole rows can underflow to 0 (0/0 = NaN).
    tiny = torch.finfo(q.dtype).tiny
    q /= all_reduce_(q.sum()).clamp(min=tiny)
    for _ in range(n_iterations):
        # every prototype gets total mass 1/K ...
        q /= all_reduce_(q.sum(dim=1, keepdim=True)).clamp(min=tiny)
        q /= n_prototypes
        # ... and every sample total mass 1/N
        q /= q.sum(dim=0, keepdim=True).clamp(min=tiny)
        q /= n_samples
    q *= n_samples
    return q.t()


class _CenteredTeacher(nn.Module):
    """Shared teacher-side logic: EMA centre + softmax, or Sinkhorn-Knopp."""

    def __init__(self, out_dim: int, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_probs(
        self,
        teacher_logits: Tensor,
        temp: float,
        centering: Centering = "centering",
        n_iterations: int = 3,
        update_center: bool = True,
    ) -> Tensor:
        """Turn teacher logits `[N, K]` into target distributions `[N, K]`.

        With "centering", the logits are shifted by the EMA centre before a sharp softmax, and
        the centre is then updated with this batch's mean (all ranks) when `update_center`.
        """
        if centering == "sinkhorn_knopp":
            return sinkhorn_knopp(teacher_logits, temp, n_iterations)
        if centering != "centering":
            raise ValueError(f"unknown centering {centering!r}")
        probs = F.softmax((teacher_logits.float() - self.center) / temp, dim=-1)
        if update_center:
            self.update_center(teacher_logits)
        return probs

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """EMA update of the centre with the mean of `teacher_logits` `[N, K]` over all ranks."""
        total = all_reduce_(teacher_logits.float().sum(dim=0, keepdim=True))
        count = all_reduce_(torch.tensor(float(teacher_logits.shape[0]), device=total.device))
        batch_center = total / count.clamp(min=1.0)
        m = self.center_momentum
        self.center.mul_(m).add_(batch_center, alpha=1.0 - m)


class DINOLoss(_CenteredTeacher):
    """Cross-entropy between teacher and student CLS distributions over all view pairs.

    Every student global crop is matched with every *other* teacher global crop, every student
    local crop with every teacher global crop; the loss is the mean over those pairs.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__(out_dim, center_momentum)
        self.student_temp = student_temp

    def forward(
        self, student_global: Tensor, student_local: Tensor | None, teacher_probs: Tensor
    ) -> Tensor:
        """DINO loss.

        Args:
            student_global: `[G, B, K]` student logits of the G global crops.
            student_local: `[Lc, B, K]` student logits of the local crops, or None.
            teacher_probs: `[G, B, K]` teacher targets of the global crops.

        Returns:
            Scalar: mean over (student view, teacher view) pairs of the batch-mean cross-entropy.
        """
        n_global = teacher_probs.shape[0]
        total = student_global.new_zeros(())
        n_terms = 0
        log_p = F.log_softmax(student_global.float() / self.student_temp, dim=-1)
        for s in range(student_global.shape[0]):
            for t in range(n_global):
                if s != t:  # a crop is not distilled into itself
                    total = total - (teacher_probs[t] * log_p[s]).sum(-1).mean()
                    n_terms += 1
        if student_local is not None and student_local.shape[0] > 0:
            log_p = F.log_softmax(student_local.float() / self.student_temp, dim=-1)
            for s in range(student_local.shape[0]):
                for t in range(n_global):
                    total = total - (teacher_probs[t] * log_p[s]).sum(-1).mean()
                    n_terms += 1
        if n_terms == 0:
            raise ValueError("the DINO loss needs two global crops or at least one local crop")
        return total / n_terms


class IBOTPatchLoss(_CenteredTeacher):
    """iBOT masked-image-modelling loss on the patch tokens of the masked global crops."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__(out_dim, center_momentum)
        self.student_temp = student_temp

    def forward(self, student_logits: Tensor, teacher_probs: Tensor, masks: Tensor) -> Tensor:
        """iBOT loss.

        Args:
            student_logits: `[M, K]` student logits of the M masked patches, in the order of
                `masks.nonzero()` (row-major over `[N, P]`).
            teacher_probs: `[M, K]` teacher targets of the same patches (teacher saw them).
            masks: `[N, P]` bool, the masked patches of the N global-crop images.

        Returns:
            Scalar: per image the mean cross-entropy over its masked patches, summed over the
            images and divided by N (unmasked images count as zero, as in DINOv2, so that
            the DINOv2 loss weight 1.0 keeps its meaning).
        """
        ce = -(teacher_probs * F.log_softmax(student_logits.float() / self.student_temp, dim=-1))
        ce = ce.sum(-1)  # [M]
        per_image = masks.sum(-1).clamp(min=1).float()  # [N]
        weight = (1.0 / per_image).unsqueeze(-1).expand_as(masks)[masks]  # [M]
        return (ce * weight).sum() / masks.shape[0]


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Kozachenko-Leonenko entropy regulariser (Sablayrolles et al., 2019).

    Args:
        x: `[B, D]` embeddings (one view per image).

    Returns:
        Scalar: `-mean_i log(||x_i - x_nn(i)||)` on L2-normalised rows; 0 when B < 2.
    """
    if x.shape[0] < 2:
        return x.new_zeros(())
    x = F.normalize(x.float(), dim=-1, eps=eps)
    with torch.no_grad():
        sims = x @ x.t()
        sims.fill_diagonal_(-2.0)  # below any cosine: a row never picks itself
        nearest = sims.argmax(dim=1)
    # pairwise_distance adds eps inside the norm: duplicates give a finite log and gradient
    distances = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distances + eps).mean()
