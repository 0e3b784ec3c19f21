"""CLUB: the O(N D) estimate equals the explicit double loop, bounds known MI, and decreases."""

import math

import torch

from mscg_lightning.stages.bbq.club import CLUB, club_reference


def _fit(club: CLUB, x: torch.Tensor, y: torch.Tensor, steps: int = 400) -> None:
    opt = torch.optim.Adam(club.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        club.learning_loss(x, y).backward()
        opt.step()


def _pairs(n: int, d: int, rho: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = rho * x + math.sqrt(1 - rho**2) * torch.randn(n, d, generator=g)
    return x, y


def test_estimate_equals_explicit_double_loop():
    torch.manual_seed(0)
    club = CLUB(3, 4, hidden=8)
    x, y = torch.randn(7, 3), torch.randn(7, 4)
    assert torch.allclose(club(x, y), club_reference(club, x, y), atol=1e-5)


def test_fitted_estimate_bounds_the_mutual_information_of_gaussians():
    # y = rho x + noise per dimension: I = -d/2 log(1 - rho^2); CLUB with the true conditional
    # is d rho^2 / (1 - rho^2) (an upper bound); independent variables give 0.
    torch.manual_seed(0)
    d, rho = 2, 0.8
    x, y = _pairs(4000, d, rho)
    club = CLUB(d, d, hidden=32)
    _fit(club, x, y)
    with torch.no_grad():
        estimate = float(club(x, y))
    true_mi = -d / 2 * math.log(1 - rho**2)
    club_true_q = d * rho**2 / (1 - rho**2)
    assert estimate >= true_mi
    assert abs(estimate - club_true_q) < 0.15 * club_true_q
    xi, yi = _pairs(4000, d, 0.0, seed=1)
    independent = CLUB(d, d, hidden=32)
    _fit(independent, xi, yi)
    with torch.no_grad():
        assert abs(float(independent(xi, yi))) < 0.1


def test_minimising_the_estimate_decorrelates_the_pair():
    # y = A x + noise with a learnable A: alternating q-fitting and minimisation (as BBQModule
    # does) drives the estimate, and the dependence, down.
    torch.manual_seed(0)
    x = torch.randn(2000, 2)
    noise = 0.5 * torch.randn(2000, 2)
    a = torch.nn.Parameter(torch.eye(2))
    club = CLUB(2, 2, hidden=16)
    q_opt = torch.optim.Adam(club.parameters(), lr=1e-2)
    a_opt = torch.optim.Adam([a], lr=1e-2)

    def estimate() -> float:
        _fit(club, x, x @ a.detach().T + noise, steps=200)
        with torch.no_grad():
            return float(club(x, x @ a.T + noise))

    first = estimate()
    for _ in range(300):
        y = x @ a.T + noise
        q_opt.zero_grad()
        club.learning_loss(x, y).backward()
        q_opt.step()
        a_opt.zero_grad()
        club(x, y).backward()
        a_opt.step()
    last = estimate()
    assert first > 2.0
    assert last < 0.25 * first
    assert float(a.detach().abs().max()) < 0.5
