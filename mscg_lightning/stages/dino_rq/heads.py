"""DINO / iBOT projection head: MLP -> L2-normalised bottleneck -> weight-normalised prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DINOHead(nn.Module):
    """Projection head of DINO and iBOT.

    `nlayers` linear layers (GELU between them) map `[N, in_dim]` to a `[N, bottleneck_dim]`
    bottleneck, which is L2-normalised and scored against `out_dim` prototypes. The prototype
    matrix is weight-normalised (direction `weight_v`, per-prototype norm `weight_g`, initialised
    to 1) so the logits are bounded cosine similarities at the start of training, which keeps the
    teacher softmax at temperature 0.04 from overflowing.

    Args:
        in_dim: backbone embedding size D.
        out_dim: number of prototypes K.
        hidden_dim: width of the hidden MLP layers.
        bottleneck_dim: size of the normalised bottleneck.
        nlayers: number of linear layers of the MLP (>= 1).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(nlayers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        # Explicit weight norm (rather than torch's parametrisation) keeps the teacher a plain
        # deepcopy whose parameters can be EMA-updated one to one.
        prototypes = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.weight_v = nn.Parameter(prototypes.weight.detach().clone())  # [K, bottleneck]
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))  # [K, 1]

    def prototypes(self) -> Tensor:
        """The weight-normalised prototype matrix `[K, bottleneck_dim]`."""
        return self.weight_g * F.normalize(self.weight_v, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Map embeddings `[N, in_dim]` to prototype logits `[N, K]`."""
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, eps=eps)
        return x @ self.prototypes().to(x.dtype).t()
