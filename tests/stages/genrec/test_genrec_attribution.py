import pytest

from mscg_lightning.stages.genrec.attribution import shapley_values


def test_additive_game_gives_each_players_own_worth():
    worth = {"text": 0.1, "image": 0.02, "collab": 0.3}
    phi = shapley_values(list(worth), lambda s: sum(worth[p] for p in s))
    assert phi == pytest.approx(worth)


def test_shapley_values_are_efficient_and_symmetric():
    # v(S) = 1 if text and collab are both kept (a pure complementarity), else 0
    def value(s):
        return 1.0 if {"text", "collab"} <= s else 0.0

    phi = shapley_values(["text", "image", "collab"], value)
    assert phi["text"] == pytest.approx(0.5) and phi["collab"] == pytest.approx(0.5)
    assert phi["image"] == pytest.approx(0.0)
    assert sum(phi.values()) == pytest.approx(value({"text", "image", "collab"}) - value(set()))
