"""The console (console.py, cli_help.py): epoch lines equal the logged values, warnings once,
a metrics table within 120 columns equal to the full one, short help with per-section topics."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from mscg_lightning.cli import main
from mscg_lightning.console import quiet_third_party
from mscg_lightning.report import read_scalars

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def _result(mean: float) -> dict:
    return {"mean": mean, "ci_low": mean / 2, "ci_high": min(1.0, mean * 1.5)}


def test_third_party_warning_is_shown_once_whatever_the_filters() -> None:
    shown = []
    with warnings.catch_warnings():
        warnings.showwarning = lambda *a, **k: shown.append(str(a[0]))
        quiet_third_party()
        warnings.simplefilter("always")  # as libraries do with every Trainer
        for _ in range(3):
            warnings.warn("a test-only deprecation 7f3a", FutureWarning, stacklevel=1)
    assert shown == ["a test-only deprecation 7f3a"]


def test_one_line_per_validation_epoch_with_the_logged_values(tmp_path, capsys) -> None:
    args = ["fit", "--config", TINY, "--run_dir", str(tmp_path / "run")]
    args += ["--data_root", str(REPO / "tests" / "fixtures"), "--stages", "prepare,sasrec"]
    args += ["--sasrec.trainer.max_epochs", "3"]
    assert main(args) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if " epoch " in x]
    assert [x.split(":")[0] for x in lines] == [f"[mscg] sasrec epoch {e}/3" for e in (1, 2, 3)]
    assert all(len(x) <= 120 for x in lines)
    logged = dict(read_scalars(tmp_path / "run")["sasrec"]["val/ndcg@10"])
    for line, (_, value) in zip(lines, sorted(logged.items())):
        printed = float(re.search(r"val/ndcg@10 (\S+)", line).group(1))
        assert abs(printed - value) <= 5e-4 * max(1.0, abs(value))


def test_short_help_and_section_topics(capsys) -> None:
    assert main(["fit", "--help"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) < 40 and "--help genrec" in out
    assert main(["fit", "--help", "genrec"]) == 0
    out = capsys.readouterr().out
    assert "--genrec.trainer.max_epochs" in out and "--sasrec." not in out
    assert main(["fit", "--help", "prepare"]) == 0
    assert "--prepare.columns COLUMNS" in capsys.readouterr().out
    assert main(["predict", "--help"]) == 0
    assert "history     list<int|string>" in capsys.readouterr().out
    assert main(["fit", "--help", "nonsense"]) == 2
