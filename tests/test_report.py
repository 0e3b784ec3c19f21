"""`mscg report` and the metrics table in TensorBoard: scalars read back exactly (a resumed run's
repeated steps keep the latest value), the PNG of the main curves, the one-sentence errors."""

import sys
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from mscg_lightning.cli import main
from mscg_lightning.errors import MscgError
from mscg_lightning.report import plot_report, read_scalars

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write(folder: Path, points: dict[str, list[tuple[int, float]]], walltime: float) -> None:
    writer = SummaryWriter(log_dir=str(folder))
    for tag, series in points.items():
        for step, value in series:
            writer.add_scalar(tag, value, global_step=step, walltime=walltime + step)
    writer.close()


@pytest.fixture
def logged_run(tmp_path: Path) -> Path:
    """A run directory with hand-written TensorBoard scalars of three stages."""
    tb = tmp_path / "tensorboard"
    _write(
        tb / "sasrec",
        {
            "train/loss_step": [(0, 5.0), (1, 4.5), (2, 4.0)],
            "train/loss_epoch": [(2, 4.5)],
            "val/ndcg@10": [(2, 0.25)],
            "val/loss": [(2, 4.25)],
        },
        walltime=1000.0,
    )
    _write(
        tb / "rq_text", {"train/loss_epoch": [(0, 0.5)], "rq/collision_rate": [(0, 0.125)]}, 1000.0
    )
    # genrec killed after step 2, resumed from its step-1 checkpoint: steps 2-3 logged again.
    _write(tb / "genrec", {"train/loss_epoch": [(0, 3.0), (1, 2.5), (2, 2.0)]}, walltime=1000.0)
    _write(tb / "genrec", {"train/loss_epoch": [(2, 1.75), (3, 1.5)]}, walltime=2000.0)
    SummaryWriter(log_dir=str(tb / "report")).add_text("report/metrics", "| table |")
    return tmp_path


def test_read_scalars_reads_every_point_and_the_latest_of_a_repeated_step(logged_run):
    scalars = read_scalars(logged_run)
    assert set(scalars) == {"sasrec", "rq_text", "genrec"}  # report holds text only
    assert scalars["genrec"]["train/loss_epoch"] == [(0, 3.0), (1, 2.5), (2, 1.75), (3, 1.5)]
    assert scalars["sasrec"]["train/loss_step"] == [(0, 5.0), (1, 4.5), (2, 4.0)]
    assert scalars["rq_text"]["rq/collision_rate"] == [(0, 0.125)]


def test_plot_report_draws_losses_and_validation_per_stage(logged_run, tmp_path):
    out, drawn = plot_report(logged_run, tmp_path / "plots" / "r.png")
    # per-epoch loss rather than per-step when both exist; NDCG rather than the val loss
    assert drawn == {
        "sasrec": ["train/loss_epoch", "val/ndcg@10"],
        "rq_text": ["train/loss_epoch", "rq/collision_rate"],
        "genrec": ["train/loss_epoch"],
    }
    assert out == tmp_path / "plots" / "r.png"
    assert out.read_bytes()[:8] == PNG_MAGIC
    with Image.open(out) as image:
        assert image.size == (1100, 3 * 280)  # one row of two panels per stage


def test_report_errors_are_one_sentence(logged_run, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", "--run_dir", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "holds no TensorBoard event files" in err and err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(MscgError, match=r"pip install 'mscg_lightning\[report\]'"):
        plot_report(logged_run)
    assert not (logged_run / "report.png").exists()


def _report_texts(run_dir: Path) -> list[str]:
    acc = EventAccumulator(str(run_dir / "tensorboard" / "report"), size_guidance={"tensors": 0})
    acc.Reload()
    # torch's add_text stores tag T as T/text_summary
    events = acc.Tensors("report/metrics/text_summary")
    return [e.tensor_proto.string_val[0].decode() for e in events]


def test_tiny_run_table_in_tensorboard_and_report_png(tmp_path, capsys):
    run = tmp_path / "run"
    tiny = ["--config", str(REPO / "configs" / "tiny.yaml"), "--run_dir", str(run)]
    assert main(["fit", *tiny, "--data_root", str(REPO / "tests" / "fixtures")]) == 0
    printed = capsys.readouterr().out
    texts = _report_texts(run)
    assert len(texts) == 1 and "| SASRec | sasrec | 60 |" in texts[0]
    assert "sasrec " in printed and (run / "metrics.md").read_text().strip() == texts[0]
    table = [line for line in printed.splitlines() if not line.startswith("[mscg]")]
    assert max(len(line) for line in table) <= 120
    # `mscg test` only reads the run directory: no file in it changes
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    assert main(["test", *tiny]) == 0
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
    assert len(_report_texts(run)) == 1
    capsys.readouterr()

    png = tmp_path / "report.png"
    assert main(["report", "--run_dir", str(run), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert not (run / "report.png").exists()
    assert f"[mscg] report: {png}" in out and "sasrec " in out
    scalars = read_scalars(run)
    for stage in ("sasrec", "genrec"):
        assert f"{stage}: train/loss_epoch, val/ndcg@10, val/recall@10" in out
        # the curves drawn are those the stage logged: one point per epoch (tiny: 2 epochs)
        assert len(scalars[stage]["train/loss_epoch"]) == 2
    for stage in ("rq_text", "rq_image", "rq_collab"):
        assert f"{stage}: train/loss_epoch, rq/collision_rate" in out
    with Image.open(png) as image:
        assert image.size == (1100, 5 * 280)
