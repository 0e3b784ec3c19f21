"""CLUB: a contrastive log-ratio upper bound of mutual information (Cheng et al., ICML 2020).

BBQRec's L_MIM (paper Eq. 3) is, per content modality, the CLUB estimate

    I(z; z̄) <= mean_i log q(z̄_i | z_i) - mean_i mean_j log q(z̄_j | z_i)

with q_θ(z̄ | z) a diagonal Gaussian whose mean and log-variance are MLPs of z. CLUB prescribes
two alternating steps, which BBQRec's paper leaves out: q_θ is fitted by maximum likelihood on
detached pairs (:meth:`CLUB.learning_loss`), then the encoders minimise the estimate
(:meth:`CLUB.forward`) with q_θ held fixed. The Lightning glue runs them with two optimizers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CLUB(nn.Module):
    """q_θ(y | x) = N(mu(x), diag(exp(logvar(x)))) and the CLUB estimate of I(x; y).

    Args:
        x_dim: dimension of the conditioning variable x (BBQRec: the behaviour latent z).
        y_dim: dimension of y (the modality-specific latent z̄).
        hidden: width of the two one-hidden-layer MLPs (mean and log-variance).
    """

    def __init__(self, x_dim: int, y_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        self.logvar = nn.Sequential(
            nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim), nn.Tanh()
        )

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(x), self.logvar(x)

    def log_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """Mean Gaussian log-likelihood of y [N, Dy] given x [N, Dx] (constant dropped): scalar."""
        mu, logvar = self._params(x)
        return (-((mu - y) ** 2) / logvar.exp() - logvar).sum(-1).mean()

    def learning_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Loss of q_θ's own step: the negative log-likelihood of detached pairs (scalar)."""
        return -self.log_likelihood(x.detach(), y.detach())

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """CLUB estimate of I(x; y) over a batch of pairs x [N, Dx], y [N, Dy]: scalar.

        positive_i = log q(y_i | x_i), negative_i = mean_j log q(y_j | x_i) (all N pairs, the
        diagonal included, as in Eq. 3), each without the shared ``logvar`` and constant terms,
        which cancel in the difference. Computed in O(N D) from the first two moments of y.
        """
        mu, logvar = self._params(x)
        inv_var = (-logvar).exp()
        positive = -0.5 * ((mu - y) ** 2 * inv_var).sum(-1)
        # mean_j (y_j - mu_i)^2 = mean_j y_j^2 - 2 mu_i mean_j y_j + mu_i^2, per dimension
        y_mean, y_sq = y.mean(0, keepdim=True), (y**2).mean(0, keepdim=True)
        negative = -0.5 * ((y_sq - 2 * mu * y_mean + mu**2) * inv_var).sum(-1)
        return (positive - negative).mean()


def club_reference(club: CLUB, x: Tensor, y: Tensor) -> Tensor:
    """:meth:`CLUB.forward` by the explicit double loop of Eq. 3 (tests only): scalar."""
    n = x.shape[0]
    mu, logvar = club._params(x)
    var = logvar.exp()

    def log_q(i: int, j: int) -> Tensor:
        return (-0.5 * (y[j] - mu[i]) ** 2 / var[i]).sum()

    total = torch.zeros(())
    for i in range(n):
        total = total + log_q(i, i) - torch.stack([log_q(i, j) for j in range(n)]).mean()
    return total / n
