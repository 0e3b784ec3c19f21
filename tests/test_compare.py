"""`mscg test`: the comparison of every model instance of configs/compare/tiny.yaml."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mscg_lightning.cli import main
from mscg_lightning.compare import (
    MAX_WIDTH,
    Row,
    compare,
    format_terminal,
    paired_diff,
    read_test_ranks,
)
from mscg_lightning.metrics import per_user_metrics

REPO = Path(__file__).resolve().parents[1]
COMPARE = str(REPO / "configs" / "compare" / "tiny.yaml")
ROWS = ("sasrec", "mscgrec", "tiger", "no_const_train", "no_pos_emb", "masking")


def _fit(run: Path) -> list[str]:
    args = ["fit", "--config", COMPARE, "--run_dir", str(run)]
    assert main([*args, "--data_root", str(REPO / "tests" / "fixtures")]) == 0
    return args


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    """compare/tiny.yaml fitted once (SASRec, MSCGRec, TIGER and the ablations)."""
    run = tmp_path_factory.mktemp("compare") / "run"
    _fit(run)
    return run


def _snapshot(run: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in run.rglob("*")}


def test_fit_again_is_up_to_date_and_rewrites_no_manifest(compared, capsys):
    capsys.readouterr()
    before = _snapshot(compared)
    manifests = sorted(compared.rglob("manifest.json"))
    _fit(compared)
    out = capsys.readouterr().out
    stages = [line for line in out.splitlines() if line.startswith("[mscg]") and ": " in line]
    stages = [line for line in stages if "every metric" not in line]
    assert len(stages) == 12 and all("up to date" in line for line in stages), out
    assert {m: before[m] for m in manifests} == {m: m.stat().st_mtime_ns for m in manifests}


def test_mscg_test_prints_every_model_row_within_120_columns(compared, capsys):
    before = _snapshot(compared)
    capsys.readouterr()
    assert main(["test", "--run_dir", str(compared)]) == 0  # no --config: R/config.yaml
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= MAX_WIDTH, out
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in ROWS}
    assert set(rows) == set(ROWS), out
    assert "(reference)" in rows["mscgrec"] and "vs mscgrec" in lines[1]
    assert rows["tiger"].count("[") == 5  # four metrics with CIs and the paired difference
    assert _snapshot(compared) == before  # read-only: nothing in the run directory changed
    # another reference, every metric to --out; overrides never rewrite the saved config
    saved = (compared / "config.yaml").read_text()
    out_dir = compared.parent / "out"
    args = ["test", "--run_dir", str(compared), "--reference", "sasrec", "--out", str(out_dir)]
    assert main([*args, "--seed", "7", "--mscgrec.trainer.max_epochs", "99"]) == 0
    out = capsys.readouterr().out
    assert "vs sasrec" in out
    result = json.loads((out_dir / "metrics.json").read_text())
    assert result["reference"] == "sasrec" and set(result["rows"]) == set(ROWS)
    diff = result["rows"]["mscgrec"]["vs_reference"]["ndcg@10"]
    assert diff["ci_low"] <= diff["mean"] <= diff["ci_high"] and diff["users"] == 60
    assert "| mscgrec |" in (out_dir / "metrics.md").read_text()
    assert (compared / "config.yaml").read_text() == saved
    assert _snapshot(compared) == before


def test_read_only_commands_refuse_a_mistyped_run_dir(compared, capsys):
    typo = compared.parent / "rnu"
    for command in ("test", "predict", "attribute"):
        extra = ["--user_histories", "h.parquet"] if command == "predict" else []
        assert main([command, "--run_dir", str(typo), *extra]) == 2
        err = capsys.readouterr().err
        assert "does not exist" in err and err.count("\n") == 1, err
    assert main(["report", "--run_dir", str(typo)]) == 2
    assert "does not exist" in capsys.readouterr().err
    # with --config too: the run directory is never created
    assert main(["test", "--config", COMPARE, "--run_dir", str(typo)]) == 2
    capsys.readouterr()
    assert not typo.exists()
    # several genrec instances: predict and attribute ask which one
    assert main(["attribute", "--run_dir", str(compared)]) == 2
    assert "--instance NAME" in capsys.readouterr().err


def test_test_ranks_reproduce_each_stage_metrics(compared):
    for name in ("sasrec", "mscgrec", "tiger"):
        users, ranks, k = read_test_ranks(compared / name)
        assert len(users) == 60 and k == 10
        metrics = json.loads((compared / name / "metrics.json").read_text())["test"]
        per_user = per_user_metrics(torch.from_numpy(ranks), (1, 5, 10))
        for metric, values in per_user.items():
            assert values.mean().item() == pytest.approx(metrics[metric]["mean"], abs=1e-6)


def test_every_ablation_changes_the_model(compared):
    """Each variant trains with the setting it names (an override that did not reach its
    instance would leave the model equal to MSCGRec's) and ranks differently from MSCGRec."""
    expected = {
        "mscgrec": {"position_bias": "dual", "constrained_training": "constrained", "mask_prob": 0},
        "tiger": {"position_bias": "t5", "constrained_training": "full_vocab"},
        "no_const_train": {"position_bias": "dual", "constrained_training": "full_vocab"},
        "no_pos_emb": {"position_bias": "t5", "constrained_training": "constrained"},
        "masking": {"mask_prob": 0.75, "position_bias": "dual"},
    }
    _, reference, _ = read_test_ranks(compared / "mscgrec")
    states = {}
    for name, settings in expected.items():
        ckpt = torch.load(compared / name / "model.ckpt", map_location="cpu", weights_only=False)
        hparams = ckpt["hyper_parameters"]
        for key, value in settings.items():
            assert hparams[key] == value, (name, key, hparams[key])
        states[name] = ckpt["state_dict"]
        if name != "mscgrec":
            _, ranks, _ = read_test_ranks(compared / name)
            assert not np.array_equal(ranks, reference), name
    assert (
        states["tiger"]["model.embed.weight"].shape != states["mscgrec"]["model.embed.weight"].shape
    )
    assert "model.encoder_bias.weight" in states["no_pos_emb"]
    assert "model.item_bias.weight" in states["mscgrec"]


def test_paired_bootstrap_matches_a_loop():
    """The paired difference resamples users jointly: the same as a loop over resamples."""
    rng = np.random.default_rng(0)
    users = np.arange(50)
    a = Row("a", "A", users, {"ndcg@10": rng.random(50)})
    b = Row("b", "B", users[::-1].copy(), {"ndcg@10": rng.random(50)})
    got = paired_diff(a, b, "ndcg@10", num_samples=200, seed=3)
    # reference: align by user, draw the same resamples, difference of the two means each time
    vb = dict(zip(b.users.tolist(), b.values["ndcg@10"].tolist()))
    va = a.values["ndcg@10"]
    vb = np.array([vb[u] for u in users])
    idx = torch.randint(50, (200, 50), generator=torch.Generator().manual_seed(3)).numpy()
    means = np.array([va[i].mean() - vb[i].mean() for i in idx])
    low, high = np.quantile(means, [0.025, 0.975])
    assert got["mean"] == pytest.approx(va.mean() - vb.mean())
    assert got["ci_low"] == pytest.approx(low) and got["ci_high"] == pytest.approx(high)
    assert got["excludes_zero"] == bool(low > 0 or high < 0)


def test_terminal_table_fits_120_columns_with_long_names():
    rng = np.random.default_rng(1)
    rows = [
        Row(
            name,
            name,
            np.arange(30),
            {m: rng.random(30) for m in ("recall@5", "ndcg@5", "recall@10", "ndcg@10")},
        )
        for name in ("sasrec", "a_very_long_instance_name_of_an_ablation_variant", "mscgrec")
    ]
    text = format_terminal(compare(rows, "a_very_long_instance_name_of_an_ablation_variant"))
    assert max(len(line) for line in text.splitlines()) <= MAX_WIDTH, text
    assert len([line for line in text.splitlines() if " 30 " in line]) == 3
