"""Stage ``genrec``: codes of every modality -> trained T5, test metrics, predictions.

The section's ``modalities`` maps each input modality to its codes source, in the order the
codes stand inside every history item: an rq artifact (``rq_text``) or codes given by
``prepare`` (``prepare:codes_lemb``, a collision level is appended). ``target`` names the
modality whose codes the decoder generates. One modality in and out is TIGER.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mscg_lightning.artifacts import Manifest, read_codes, read_manifest, write_json
from mscg_lightning.compare import write_test_ranks
from mscg_lightning.errors import MscgError
from mscg_lightning.pipeline import StageContext, artifact_dir, resolve_source
from mscg_lightning.stages.genrec.bbq_source import BBQSource, is_triple, single_bbq
from mscg_lightning.stages.genrec.tokens import TokenLayout, stack_modality_codes


def load_catalogue(
    prepared_dir: Path, sources: dict[str, str], run_dir: Path
) -> tuple[dict[str, Any], dict[str, tuple[torch.Tensor, torch.Tensor]], int]:
    """Read every modality's codes; returns (layout dict without target, tables, num_items).

    ``tables`` maps modality -> (item_idx [n], codes [n, L+1]).
    """
    from mscg_lightning.stages.rq.stage import codes_from_given

    num_items = int(read_manifest(prepared_dir, stage="prepare").extra["num_items"])
    if not sources:
        raise MscgError("genrec.modalities is empty: name at least one codes source.")
    tables, vocab_sizes = {}, []
    for modality, source in sources.items():
        resolved = resolve_source(run_dir, source)
        if resolved.column is not None:
            item_idx, codes, k = codes_from_given(resolved.path, resolved.column)
            item_idx, codes = torch.from_numpy(item_idx), torch.from_numpy(codes)
            collision = int(codes[:, -1].max()) + 1
        else:
            table = read_codes(resolved.path, num_items=num_items)
            item_idx, codes, k, collision = (
                table.item_idx,
                table.codes,
                table.codebook_size,
                table.collision_size,
            )
        levels = codes.shape[1] - 1
        tables[modality] = (item_idx, codes)
        vocab_sizes.append([int(k)] * levels + [int(collision)])
    layout = {"modalities": list(sources), "vocab_sizes": vocab_sizes}
    return layout, tables, num_items


@dataclass
class Catalogue:
    """What GenRecModule is built and fed with: the token layout dict, codes [N, M, P_max],
    present [N, M], and the bbq (triple-token) source if any (``bbq_source.py``)."""

    layout: dict[str, Any]
    codes: torch.Tensor
    present: torch.Tensor
    bbq: BBQSource | None = None

    def attach(self, model: Any) -> None:
        """``model.set_catalogue`` with the bbq triples / item vectors the model needs."""
        bbq = self.bbq
        vectors = None
        if bbq is not None and model.hparams.get("sim_attention", False):
            vectors = bbq.item_vectors(self.codes.shape[0])
        triples = None if bbq is None else bbq.triples
        model.set_catalogue(self.codes, self.present, triples=triples, item_vectors=vectors)


def read_catalogue(
    prepared_dir: Path, sources: dict[str, str], target: str, run_dir: Path
) -> Catalogue:
    """The :class:`Catalogue` of a genrec section; a bbq source's triples are compacted to the
    triples that occur (dense ids per level, see ``bbq_source.py``)."""
    layout, tables, num_items = load_catalogue(prepared_dir, sources, run_dir)
    found = []
    for modality, source in sources.items():
        directory = _codes_dir(run_dir, source)
        if directory is None:
            continue
        manifest = read_manifest(directory)
        if is_triple(manifest):
            item_idx, raw = tables[modality]
            bbq = BBQSource.from_codes(modality, directory, manifest.extra, raw)
            tables[modality] = (item_idx, bbq.compact(raw))
            m = layout["modalities"].index(modality)
            layout["vocab_sizes"][m] = [len(v) for v in bbq.triples] + [
                layout["vocab_sizes"][m][-1]
            ]
            layout["triple"] = bbq.layout_entry()
            found.append(bbq)
    bbq = single_bbq(found)
    layout, codes, present = _stack(layout, tables, num_items, sources, target)
    return Catalogue(layout, codes, present, bbq)


def _codes_dir(run_dir: Path, source: str) -> Path | None:
    """The artifact folder of a codes source (``instance`` or ``instance:part``), None for
    codes that are a column of the prepared data (``prepare:codes_lemb``)."""
    resolved = resolve_source(run_dir, source)
    return resolved.path if resolved.column is None else None


def build_catalogue(
    prepared_dir: Path, sources: dict[str, str], target: str, run_dir: Path
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """(token layout dict, codes [N, M, P_max], present [N, M]) for GenRecModule."""
    cat = read_catalogue(prepared_dir, sources, target, run_dir)
    return cat.layout, cat.codes, cat.present


def _stack(
    layout: dict[str, Any], tables: dict, num_items: int, sources: dict[str, str], target: str
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    if target not in sources:
        raise MscgError(
            f"genrec.target '{target}' is not one of genrec.modalities {list(sources)}."
        )
    layout["target"] = target
    token_layout = TokenLayout(layout["modalities"], layout["vocab_sizes"], target)
    codes, present = stack_modality_codes(token_layout, num_items, tables)
    return layout, codes, present


def run(ctx: StageContext) -> Manifest | None:
    from mscg_lightning.training import build_stage

    section = ctx.section
    sources = dict(section.modalities or {})
    prepared = ctx.inputs["prepare"]
    catalogue = read_catalogue(prepared, sources, section.target, ctx.run_dir)
    layout, codes = catalogue.layout, catalogue.codes
    val_metric = section.model.init_args.get("val_metric", "ndcg@10")
    monitor, mode = ("val/loss", "min") if val_metric == "loss" else ("val/ndcg@10", "max")
    stage = build_stage(
        ctx,
        inject={
            "model.init_args.token_layout": layout,
            "data.init_args.prepared_dir": str(prepared),
        },
        monitor=monitor,
        mode=mode,
    )
    model = stage.model
    catalogue.attach(model)
    if model.hparams.get("inherit_code_embeddings", False):
        model.inherit_codebooks(catalogue.bbq.codebooks())
    stage.trainer.fit(model, datamodule=stage.datamodule, ckpt_path=stage.resume_from)
    best = stage.checkpoint.best_model_path or None
    if best:
        state = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        model.load_state_dict(state)
    catalogue.attach(model)
    stage.trainer.test(model, datamodule=stage.datamodule, verbose=False)  # mscg prints its own
    test_users, test_ranks = model.test_metrics.user_ranks()  # every rank: it gathers
    if ctx.out_dir is None:
        return None
    result = model.test_result
    write_test_ranks(ctx.out_dir, test_users, test_ranks, int(model.hparams.top_k))
    name = "TIGER" if len(sources) == 1 else "MSCGRec"
    if catalogue.bbq is not None:
        name = "BBQRec"
    write_json(
        ctx.out_dir / "metrics.json",
        {
            "model": f"GenRec ({name}: {', '.join(sources)} -> {section.target})",
            "test": result,
            "epochs": stage.trainer.current_epoch,
            "best_checkpoint_score": _float(stage.checkpoint.best_model_score),
            "modalities": sources,
            "target": section.target,
        },
    )
    _write_predictions(ctx.out_dir / "predictions.parquet", model.predictions, prepared)
    torch.save(
        {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams)},
        ctx.out_dir / "model.ckpt",
    )
    return ctx.manifest(
        rows={"test_users": int(result["num_users"]["mean"]), "items": int(codes.shape[0])},
        extra={"modalities": sources, "target": section.target, "token_layout": layout},
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _write_predictions(path: Path, predictions: list, prepared: Path) -> None:
    """``user_idx``, ``items`` (top-K item_idx, best first) and ``scores`` per test user."""
    if not predictions:
        users = np.zeros(0, np.int64)
        items = scores = np.zeros((0, 0))
    else:
        users = torch.cat([p[0] for p in predictions]).numpy()
        items = torch.cat([p[1] for p in predictions]).numpy()
        scores = torch.cat([p[2] for p in predictions]).numpy()
        users, first = np.unique(users, return_index=True)
        items, scores = items[first], scores[first]
    table = pa.table(
        {
            "user_idx": pa.array(users, type=pa.int32()),
            "items": pa.array(list(items.astype(np.int32)), type=pa.list_(pa.int32())),
            "scores": pa.array(list(scores.astype(np.float32)), type=pa.list_(pa.float32())),
        }
    )
    pq.write_table(table, path)


def history_length(config, instance: str = "genrec") -> int:
    """The history length an instance was configured with (``<instance>.data.init_args.max_history``)."""
    data = getattr(getattr(config, instance, None), "data", None)
    init_args = getattr(data, "init_args", None) or {}
    return int(init_args.get("max_history", 20))


def load_trained(run_dir: Path, config, instance: str = "genrec") -> tuple[Any, Path]:
    """The trained GenRecModule of genrec instance ``instance``, with its catalogue attached."""
    from mscg_lightning.stages.genrec.module import GenRecModule
    from mscg_lightning.storage import load_checkpoint

    art = artifact_dir(run_dir, instance)
    manifest = read_manifest(art, stage="genrec")
    prepared = artifact_dir(run_dir, "prepare")
    inputs = getattr(getattr(config, instance, None), "inputs", None) or {}
    if inputs.get("prepare"):
        prepared = artifact_dir(run_dir, inputs["prepare"])
    ckpt = load_checkpoint(art / "model.ckpt", redo=f"mscg {instance} --force")  # storage.py
    trained = ckpt["hyper_parameters"]["token_layout"]
    # The manifest's JSON sorts the modalities by name; the model was trained with the codes of
    # every history item stacked in the config's order, which its token layout keeps.
    sources = {m: manifest.extra["modalities"][m] for m in trained["modalities"]}
    catalogue = read_catalogue(prepared, sources, manifest.extra["target"], run_dir)
    layout = catalogue.layout
    if layout["vocab_sizes"] != trained["vocab_sizes"]:
        raise MscgError(
            f"the codes artifacts of {run_dir} changed after genrec was trained (vocabulary "
            f"sizes {layout['vocab_sizes']} vs {trained['vocab_sizes']}): rerun `mscg fit`."
        )
    model = GenRecModule(**{**ckpt["hyper_parameters"], "token_layout": layout})
    model.load_state_dict(ckpt["state_dict"])
    catalogue.attach(model)
    model.eval()
    return model, prepared


def predict(config) -> Path:
    """``mscg predict``: top-K items for the histories in ``--user_histories`` (Parquet).

    The input has a ``history`` column (list of raw item ids, oldest first) and optionally
    ``user_id``; unknown item ids are skipped and counted. Output: the input's columns plus
    ``items`` (raw item ids), ``scores`` and ``cold_start`` (no known item in the history: the
    ranking is the model's answer to an empty history).
    """
    from mscg_lightning.artifacts import read_table
    from mscg_lightning.data.datamodule import pad_left
    from mscg_lightning.data.validate import encode_user_histories

    run_dir = Path(config.run_dir)
    instance = config.get("instance") or "genrec"
    model, prepared = load_trained(run_dir, config, instance)
    src = Path(config.user_histories)
    try:
        table = pq.read_table(src)
    except (OSError, pa.ArrowInvalid) as err:
        raise MscgError(f"{src} is not a readable Parquet file ({err}).") from err
    items = read_table(prepared / "items", columns=["item_idx", "item_id"])
    raw_ids = np.array(items.column("item_id").to_pylist(), dtype=object)
    # schema checked, unknown ids skipped, cold-start users flagged (data/validate.py)
    histories, cold_start, summary = encode_user_histories(table, src, items)
    max_history = history_length(config, instance)
    top_k = int(config.top_k)
    if top_k > model.hparams.num_beams:
        raise MscgError(f"--top_k {top_k} exceeds the model's {model.hparams.num_beams} beams.")
    model.hparams.top_k = top_k
    out_items, out_scores = [], []
    for start in range(0, len(histories), 256):
        history = pad_left(histories[start : start + 256], max_history)
        ranked, scores = model.rank(history)
        for r, s in zip(ranked.tolist(), scores.tolist()):
            out_items.append([raw_ids[i] for i in r if i >= 0])
            out_scores.append([v for i, v in zip(r, s) if i >= 0])
    result = table.append_column("items", pa.array(out_items, type=pa.list_(pa.string())))
    result = result.append_column("scores", pa.array(out_scores, type=pa.list_(pa.float32())))
    result = result.append_column("cold_start", pa.array(cold_start, type=pa.bool_()))
    out = Path(config.output) if config.output else src.with_name(src.stem + ".predictions.parquet")
    if out.exists() and out.resolve() == src.resolve():
        raise MscgError(f"--output {out} is the input file; choose another path.")
    tmp = out.with_name(f".{out.name}.tmp")
    pq.write_table(result, tmp)
    tmp.rename(out)
    print(f"[mscg] predict: {len(histories)} users -> {out} ({summary})")
    return out
