"""What a run produced, for people: the metrics table and the training curves.

``metrics_report`` is the comparison table of the run's model instances (:mod:`compare`);
``write_tensorboard_text`` stores that table in TensorBoard; ``read_scalars`` reads the scalars
every stage logged under ``<run_dir>/tensorboard/<stage>/``; ``plot_report`` draws the main
curves into one PNG (``mscg report``; matplotlib is the optional extra ``report``).
"""

from __future__ import annotations

from pathlib import Path

from mscg_lightning.errors import MscgError

#: Stage order of the curves (any other logged stage follows, sorted).
CURVE_ORDER = ("sasrec", "dino_rq", "rq_text", "rq_image", "rq_collab", "genrec")
#: The right-hand panel of a stage shows the first of these groups that it logged: ranking
#: quality on validation users, else the validation loss, else codebook quality.
QUALITY_GROUPS = (
    ("val/ndcg@10", "val/recall@10"),
    ("val/loss",),
    ("rq/collision_rate",),
    ("codes/perplexity_level1",),
)
#: TensorBoard run (folder under ``<run_dir>/tensorboard``) and tag of the metrics table.
REPORT_RUN = "report"
REPORT_TAG = "report/metrics"

Scalars = dict[str, dict[str, list[tuple[int, float]]]]


def model_instances(run_dir: Path) -> tuple[list[str], str | None]:
    """(model instances in config order, reference) of a finished run: the instances of its
    ``config.yaml`` whose artifact holds ``test_ranks.parquet`` (else every such artifact)."""
    import yaml

    from mscg_lightning.compare import TEST_RANKS
    from mscg_lightning.pipeline import artifact_dir

    saved = Path(run_dir) / "config.yaml"
    data = yaml.safe_load(saved.read_text()) if saved.is_file() else {}
    data = data if isinstance(data, dict) else {}
    names = [n for n, v in data.items() if isinstance(v, dict)]
    found = [n for n in names if (artifact_dir(run_dir, n) / TEST_RANKS).is_file()]
    if not found:
        found = sorted(p.parent.name for p in Path(run_dir).glob(f"*/{TEST_RANKS}"))
    return found, data.get("reference")


def metrics_report(run_dir: Path, missing_ok: bool = True) -> str:
    """The comparison table of the model instances found in ``run_dir`` ('' when none and
    missing_ok)."""
    from mscg_lightning.compare import comparison, format_terminal

    names, reference = model_instances(run_dir)
    result = comparison(Path(run_dir), names, reference, missing_ok=missing_ok)
    if result is None:
        if missing_ok:
            return ""
        raise MscgError(f"{run_dir} holds no test metrics yet: run `mscg fit` first.")
    return f"Test metrics, {run_dir}:\n" + format_terminal(result)


def write_tensorboard_text(run_dir: Path, text: str) -> Path:
    """Store ``text`` as TensorBoard text (tag ``report/metrics``) in ``<run_dir>/tensorboard/report``.

    Older report event files are removed first, so TensorBoard shows the table of the latest
    ``mscg fit`` / ``mscg test`` only. Returns the folder. The caller writes on rank 0 only.
    """
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(run_dir) / "tensorboard" / REPORT_RUN
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(folder))
    try:
        writer.add_text(REPORT_TAG, text, global_step=0)
    finally:
        writer.close()
    return folder


def _event_dirs(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "tensorboard"
    if not root.is_dir():
        return []
    return sorted({p.parent for p in root.rglob("events.out.tfevents.*") if p.is_file()})


def read_scalars(run_dir: Path) -> Scalars:
    """Every scalar logged under ``<run_dir>/tensorboard``: ``{stage: {tag: [(step, value)]}}``.

    ``stage`` is the event folder's path below ``tensorboard/`` (``genrec``). Points are sorted
    by step; a step logged twice (a resumed run repeats the steps after its last checkpoint)
    keeps the value written last. Folders without scalars are left out.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = Path(run_dir) / "tensorboard"
    result: Scalars = {}
    for folder in _event_dirs(run_dir):
        # purge_orphaned_data=False: resumed runs are merged below by wall time instead.
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0}, purge_orphaned_data=False)
        acc.Reload()
        tags = {}
        for tag in acc.Tags().get("scalars", []):
            latest: dict[int, float] = {}
            for event in sorted(acc.Scalars(tag), key=lambda e: e.wall_time):
                latest[int(event.step)] = float(event.value)
            tags[tag] = sorted(latest.items())
        if tags:
            result[folder.relative_to(root).as_posix()] = tags
    return result


def _loss_tags(tags: dict[str, list]) -> list[str]:
    """Training losses: ``train/*loss*``, the per-epoch mean where both it and the per-step exist."""
    losses = [t for t in tags if t.startswith("train/") and "loss" in t]
    return sorted(t for t in losses if not (t.endswith("_step") and t[:-5] + "_epoch" in tags))


def _quality_tags(tags: dict[str, list]) -> list[str]:
    for group in QUALITY_GROUPS:
        found = [t for t in group if t in tags]
        if found:
            return found
    return []


def plot_report(run_dir: Path, out: Path | None = None) -> tuple[Path, dict[str, list[str]]]:
    """One PNG of the main curves of a run: per stage, training loss(es) and validation quality.

    Each stage that logged any of them gets a row: on the left its ``train/*loss*`` scalars
    against the global step, on the right ``val/ndcg@10`` and ``val/recall@10`` (else
    ``val/loss``, else the rq collision rate, else the code perplexity). Returns the PNG path
    (default ``<run_dir name>-report.png`` in the current directory: the run directory is only
    read) and ``{stage: [tags drawn]}``.
    """
    run_dir = Path(run_dir)
    if not _event_dirs(run_dir):
        raise MscgError(
            f"{run_dir / 'tensorboard'} holds no TensorBoard event files: run `mscg fit` first."
        )
    try:
        import matplotlib
    except ImportError as err:
        raise MscgError(
            "matplotlib is not installed: install the report extra: "
            "pip install 'mscg_lightning[report]'."
        ) from err
    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    scalars = read_scalars(run_dir)
    order = [s for s in CURVE_ORDER if s in scalars] + sorted(set(scalars) - set(CURVE_ORDER))
    rows = []
    for stage in order:
        panels = (_loss_tags(scalars[stage]), _quality_tags(scalars[stage]))
        if panels[0] or panels[1]:
            rows.append((stage, panels))
    if not rows:
        raise MscgError(f"{run_dir / 'tensorboard'} holds no training loss or validation scalars.")
    fig, axes = plt.subplots(len(rows), 2, figsize=(11, 2.8 * len(rows)), squeeze=False)
    drawn: dict[str, list[str]] = {}
    for (stage, panels), row in zip(rows, axes):
        quality = "validation" if not panels[1] or panels[1][0].startswith("val/") else "codes"
        for tags, ax, title in zip(panels, row, ("training loss", quality)):
            for tag in tags:
                steps, values = zip(*scalars[stage][tag])
                # Per-epoch points are few: mark them so that a 2-epoch run still shows them.
                ax.plot(steps, values, marker="o" if len(steps) <= 50 else None, ms=3, label=tag)
            ax.set_title(f"{stage}: {title}", fontsize=10)
            ax.set_xlabel("step")
            if tags:
                ax.legend(fontsize=8)
            else:
                ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
            drawn.setdefault(stage, []).extend(tags)
    fig.tight_layout()
    out = Path(out) if out is not None else Path(f"{run_dir.resolve().name}-report.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out, drawn
