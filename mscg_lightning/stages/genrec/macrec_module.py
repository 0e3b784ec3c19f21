"""MacrecModule: Lightning glue of MACRec's generator (paper "Generative Recommendation with
Multi-aspect Alignment"; issue 19 items 2, 3 and 5).

Pure pieces: ``macrec_tasks`` (task rows and prompts), ``macrec_model`` (the composed T5 that
decodes either modality), ``macrec_alignment`` (implicit alignment), ``ensemble`` (item-id
ensemble of the two modalities' beams), ``beam_search`` and ``prefix_index`` (one per target
modality). Batches are :class:`~mscg_lightning.data.datamodule.SequenceDataModule`'s
``(user_idx, history, target)`` rows; each training row draws one task from ``tasks``.

Loss (paper Eq. 19): the generative NLL of the row's target codes plus ``implicit_weight`` x the
symmetric InfoNCE between the mean-pooled encoder states of the batch's distinct target items'
text codes and image codes (row i of both = item i).

Inference: constrained beam search (``num_beams``, paper 20) on the seqrec input (text history
-> text codes) and on the seqimage input (image history -> image codes), each against its
modality's prefix index; the two ranked lists are merged over item ids (``ensemble_rule``:
``mean``, paper; ``mql4grec``, the official ``(s_t + s_v)/2 + 1``). Hits count by item id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from mscg_lightning.artifacts import is_distributed
from mscg_lightning.errors import MscgError
from mscg_lightning.metrics import RetrievalMetrics
from mscg_lightning.stages.genrec.beam_search import beam_search
from mscg_lightning.stages.genrec.ensemble import ensemble
from mscg_lightning.stages.genrec.losses import beam_scoring_for, generative_loss, training_mode
from mscg_lightning.stages.genrec.macrec_alignment import implicit_alignment_loss
from mscg_lightning.stages.genrec.macrec_model import MODALITIES, MacrecGenerator
from mscg_lightning.stages.genrec.macrec_tasks import (
    MACREC_TASKS,
    TASK_NAMES,
    MacrecTasks,
    TaskBatch,
)
from mscg_lightning.stages.genrec.model_config import shared_t5_args
from mscg_lightning.stages.genrec.module import GenRecModule
from mscg_lightning.stages.genrec.prefix_index import PrefixIndex
from mscg_lightning.stages.genrec.tokens import EncoderInputs, TokenLayout

#: the seq2seq task each inference modality decodes with
INFERENCE_TASK = {"text": "seqrec", "image": "seqimage"}


class MacrecModule(L.LightningModule):
    """MACRec's generative recommender (MQL4GRec-style with ``implicit_weight`` 0 and the
    tokenizer's cross-modal losses off upstream).

    Args:
        token_layout: ``{"modalities": ["text", "image"], "vocab_sizes": [[...], [...]]}``
            (filled in by the stage from the codes).
        d_model, num_heads, d_kv, d_ff, encoder_layers, decoder_layers, dropout, ffn,
            position_bias, item_buckets, item_max_distance, code_buckets, code_max_distance,
            check_bucket_sum, activation_checkpointing: the T5, as :class:`GenRecModule`
            [paper: 4 + 4 layers, 6 heads x 64; d_model and d_ff unstated].
        tasks: the task set rows are drawn from [all six; ``[seqrec, seqimage]`` = the
            ablation "w/o explicit alignment"].
        task_weights: drawing weights of ``tasks`` (default uniform).
        task_sampling: ``sample`` (one task drawn per row) or ``all`` (every row once per task
            of ``tasks``, as the official code builds its data: a batch of B rows trains
            B x len(tasks) task rows).
        prompt_tokens: task prompt tokens per row [4, the official code's; the paper is silent].
        implicit_weight: lambda_implicit [0.01; 0 = "w/o L_implicit"].
        implicit_tau: InfoNCE temperature [0.1]. implicit_symmetric: t->v + v->t [paper] or
            t->v only (official).
        constrained_training: ``full_vocab`` [paper Eq. 19 and the official code: one softmax
            over every code token], ``constrained`` (Eq. 6 of MSCGRec over the target
            modality's prefix index) or ``per_level`` (over the target modality's level codes).
        lr, weight_decay, warmup_steps: AdamW, linear warm-up, cosine decay [paper lr 1e-3].
        num_beams: beams per modality [20]. top_k: items ranked per user.
        inference: ``ensemble`` [paper] or one modality's list (``text`` / ``image``).
        ensemble_rule: ``mean`` [paper: average of the two scores] or ``mql4grec``
            (official: items in both lists score ``(s_t + s_v)/2 + 1``).
        ensemble_missing: ``floor`` (an item missing from one list takes that list's lowest
            beam score) or ``own`` (its other score alone); ``mean`` rule only.
        constrained_decoding, beam_scoring: as :class:`GenRecModule` (``auto``: renormalized
            for ``constrained`` models, masked_softmax otherwise, as MQL4GRec decodes).
        val_metric: ``ndcg@10`` (ranked validation users) or ``loss`` (seqrec + seqimage NLL).
        ks: cut-offs of the retrieval metrics.
    """

    def __init__(
        self,
        token_layout: dict[str, Any] | None = None,
        d_model: int = 128,
        num_heads: int = 6,
        d_kv: int = 64,
        d_ff: int = 1024,
        encoder_layers: int = 4,
        decoder_layers: int = 4,
        dropout: float = 0.1,
        ffn: Literal["relu", "gated-gelu"] = "relu",
        position_bias: Literal["dual", "t5"] = "t5",
        item_buckets: int | None = None,
        item_max_distance: int = 20,
        code_buckets: int | None = None,
        code_max_distance: int | None = None,
        check_bucket_sum: bool = True,
        activation_checkpointing: bool = False,
        tasks: Sequence[str] = MACREC_TASKS,
        task_weights: Sequence[float] | None = None,
        task_sampling: Literal["sample", "all"] = "sample",
        prompt_tokens: int = 4,
        implicit_weight: float = 0.01,
        implicit_tau: float = 0.1,
        implicit_symmetric: bool = True,
        constrained_training: Literal["constrained", "per_level", "full_vocab"] = "full_vocab",
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 500,
        num_beams: int = 20,
        top_k: int = 10,
        inference: Literal["ensemble", "text", "image"] = "ensemble",
        ensemble_rule: Literal["mean", "mql4grec"] = "mean",
        ensemble_missing: Literal["floor", "own"] = "floor",
        constrained_decoding: bool = True,
        beam_scoring: Literal["renormalized", "masked_softmax", "auto"] = "auto",
        val_metric: Literal["ndcg@10", "loss"] = "ndcg@10",
        ks: Sequence[int] = (1, 5, 10),
    ) -> None:
        super().__init__()
        if token_layout is None:
            raise MscgError("model.init_args.token_layout is not set: the macrec stage fills it.")
        self.save_hyperparameters()
        self.hparams.tasks = list(tasks)
        self.mode = training_mode(constrained_training)
        self.beam_scoring = beam_scoring_for(beam_scoring, self.mode)
        if inference not in ("ensemble", "text", "image"):
            raise MscgError(f"macrec inference must be ensemble, text or image, got '{inference}'.")
        needed = MODALITIES if inference == "ensemble" else (inference,)
        missing = [INFERENCE_TASK[m] for m in needed if INFERENCE_TASK[m] not in tasks]
        if missing:
            raise MscgError(
                f"macrec inference '{inference}' decodes with the task(s) {missing}, which are "
                f"not in model.init_args.tasks {list(tasks)}."
            )
        if task_sampling not in ("sample", "all"):
            raise MscgError(f"macrec task_sampling must be sample or all, got '{task_sampling}'.")
        if implicit_weight < 0 or implicit_tau <= 0:
            raise MscgError(
                f"macrec implicit_weight must be >= 0 and implicit_tau > 0, got "
                f"{implicit_weight} and {implicit_tau}."
            )
        self.ks = tuple(ks)
        if top_k < max(self.ks) or top_k > num_beams:
            raise MscgError(
                f"macrec needs max(ks)={max(self.ks)} <= top_k={top_k} <= num_beams={num_beams}."
            )
        self.layout = TokenLayout(
            token_layout["modalities"], token_layout["vocab_sizes"], target="text"
        )
        self.generator = MacrecGenerator(
            self.layout,
            extra_vocab=len(TASK_NAMES) * prompt_tokens,
            tokens_per_item=max(self.layout.max_positions, prompt_tokens),
            **shared_t5_args(self.hparams),
        )
        # validates the task names / weights / prompt count now, not at the first batch
        MacrecTasks(
            self.layout,
            torch.zeros(1, 2, self.layout.max_positions, dtype=torch.long),
            torch.zeros(1, 2, dtype=torch.bool),
            tasks,
            task_weights,
            prompt_tokens,
        )
        self.val_metrics = RetrievalMetrics(self.ks)
        self.test_metrics = RetrievalMetrics(self.ks)
        self.tasks: MacrecTasks | None = None
        self.indexes: dict[str, PrefixIndex] = {}
        self.predictions: list[tuple[Tensor, Tensor, Tensor]] = []
        self.test_targets: list[Tensor] = []

    # reuse GenRecModule's AdamW + warm-up + cosine schedule and its validation-metric hooks
    # (one home each)
    configure_optimizers = GenRecModule.configure_optimizers
    on_validation_epoch_start = GenRecModule.on_validation_epoch_start
    on_validation_epoch_end = GenRecModule.on_validation_epoch_end

    # ------------------------------------------------------------------------- catalogue
    def set_catalogue(self, codes: Tensor, present: Tensor) -> None:
        """Attach every item's codes: codes [N, 2, P] (text, image), present [N, 2].

        Builds the task builder and one prefix index per target modality over the items that
        have it (an index checks that every code lies in its level's vocabulary).
        """
        self.tasks = MacrecTasks(
            self.layout,
            codes,
            present,
            self.hparams.tasks,
            self.hparams.task_weights,
            self.hparams.prompt_tokens,
        ).to(self.device)
        self.indexes = {}
        for m, name in enumerate(MODALITIES):
            has = present[:, m]
            if not has.any():
                raise MscgError(f"macrec: no item has {name} codes.")
            self.indexes[name] = PrefixIndex(
                codes[has, m, : self.layout.positions_per_modality[m]],
                self.layout.vocab_sizes[m],
                item_ids=torch.nonzero(has).squeeze(1),
            ).to(self.device)

    def _check_catalogue(self) -> None:
        if self.tasks is None:
            raise MscgError("MacrecModule.set_catalogue was not called before fit/test.")
        self.tasks.to(self.device)
        self.indexes = {m: index.to(self.device) for m, index in self.indexes.items()}

    def on_fit_start(self) -> None:
        self._check_catalogue()

    def on_test_start(self) -> None:
        self._check_catalogue()

    # -------------------------------------------------------------------------- training
    def task_loss(self, tb: TaskBatch) -> tuple[Tensor, int]:
        """Generative NLL (mean over target codes) of a task batch; rows whose target item
        lacks the target modality are left out. Returns (loss, rows used)."""
        keep = (tb.target_codes >= 0).all(1)
        if not keep.any():
            return self._zero(), 0
        enc_in = tb.encoder
        inputs = EncoderInputs(
            enc_in.input_ids[keep], enc_in.attention_mask[keep], enc_in.item_pos, enc_in.code_pos
        )
        codes, modality = tb.target_codes[keep], tb.target_modality[keep]
        enc = self.generator.encode(inputs)
        full = self.mode == "full_vocab"
        logits = self.generator.logits(enc, inputs.attention_mask, codes, modality, full)
        if full:
            return generative_loss(logits, self.generator.full_vocab_targets(codes, modality)), int(
                keep.sum()
            )
        allowed = None
        if self.mode == "constrained":
            allowed = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
            for m, name in enumerate(MODALITIES):
                rows = modality == m
                if rows.any():
                    mask = self.indexes[name].permissible(codes[rows])  # [b, P, V_m]
                    allowed[rows, :, : mask.shape[-1]] = mask
        return generative_loss(logits, codes, allowed), int(keep.sum())

    def implicit_loss(self, target: Tensor) -> Tensor:
        """L_implicit over the distinct target items that have both modalities (row i of the
        text and image states = the same item i); 0 with fewer than two such items."""
        items = torch.unique(target)
        both = (self.tasks.codes[items, :, 0] >= 0).all(1)
        items = items[both]
        if items.numel() < 2:
            return self._zero()
        text_in = self.tasks.item_inputs(items, "text")
        image_in = self.tasks.item_inputs(items, "image")
        return implicit_alignment_loss(
            self.generator.encode(text_in),
            text_in.attention_mask,
            self.generator.encode(image_in),
            image_in.attention_mask,
            tau=self.hparams.implicit_tau,
            symmetric=self.hparams.implicit_symmetric,
        )

    def _zero(self) -> Tensor:
        # spans every parameter, so backward and DDP's gradient sync run as usual
        return torch.stack([p.sum() for p in self.parameters()]).sum() * 0.0

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        history, target = batch["history"], batch["target"]
        if self.hparams.task_sampling == "all":
            task = self.tasks.allowed.repeat_interleave(history.shape[0])
            repeat = len(self.hparams.tasks)
            history, target = history.repeat(repeat, 1), target.repeat(repeat)
        else:
            task = self.tasks.sample(history.shape[0])
        rec, n = self.task_loss(self.tasks(history, target, task))
        loss = rec
        if self.hparams.implicit_weight > 0:
            implicit = self.implicit_loss(target)
            loss = rec + self.hparams.implicit_weight * implicit
            self.log("train/implicit", implicit, on_step=True, on_epoch=True, batch_size=n)
        self.log("train/rec", rec, on_step=True, on_epoch=True, batch_size=max(n, 1))
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    # ------------------------------------------------------------------------ evaluation
    def _task_index(self, name: str, b: int, device: torch.device) -> Tensor:
        return torch.full((b,), TASK_NAMES.index(name), dtype=torch.long, device=device)

    def beams(self, history: Tensor, modality: str) -> tuple[Tensor, Tensor]:
        """One modality's constrained beam search on its seq task: item ids and summed
        log-probabilities [B, num_beams] (-1 / -inf = empty)."""
        b, device = history.shape[0], history.device
        task = self._task_index(INFERENCE_TASK[modality], b, device)
        tb = self.tasks(history, torch.zeros(b, dtype=torch.long, device=device), task)
        result = beam_search(
            self.generator.view(modality),
            self.indexes[modality],
            *tb.encoder,
            num_beams=self.hparams.num_beams,
            top_k=self.hparams.num_beams,
            constrained=self.hparams.constrained_decoding,
            scoring=self.beam_scoring,
            full_vocab=self.mode == "full_vocab",
        )
        return result.items, result.scores

    @torch.no_grad()
    def rank(self, history: Tensor) -> tuple[Tensor, Tensor]:
        """Top-K item_idx [B, K] and scores [B, K] for histories [B, H] (-1 padded)."""
        k = self.hparams.top_k
        if self.hparams.inference != "ensemble":
            items, scores = self.beams(history, self.hparams.inference)
            return items[:, :k], scores[:, :k]
        items_t, scores_t = self.beams(history, "text")
        items_v, scores_v = self.beams(history, "image")
        out = ensemble(
            items_t,
            scores_t,
            items_v,
            scores_v,
            top_k=k,
            rule=self.hparams.ensemble_rule,
            missing=self.hparams.ensemble_missing,
        )
        return out.items, out.scores

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        history, target = batch["history"], batch["target"]
        b = history.shape[0]
        losses, rows = [], 0
        for name in ("seqrec", "seqimage"):
            if name in self.hparams.tasks:
                loss, n = self.task_loss(
                    self.tasks(history, target, self._task_index(name, b, history.device))
                )
                losses.append(loss * n)
                rows += n
        val = torch.stack(losses).sum() / max(rows, 1)
        self.log(
            "val/loss",
            val,
            on_epoch=True,
            prog_bar=self.hparams.val_metric == "loss",
            batch_size=max(rows, 1),
            sync_dist=True,
        )
        if self.hparams.val_metric != "loss":
            items, _ = self.rank(history)
            self.val_metrics.update(items, target, batch["user_idx"])

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.predictions, self.test_targets = [], []
        self.test_result = None

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        items, scores = self.rank(batch["history"])
        self.test_metrics.update(items, batch["target"], batch["user_idx"])
        self.predictions.append((batch["user_idx"].cpu(), items.cpu(), scores.float().cpu()))
        self.test_targets.append(batch["target"].cpu())

    def on_test_epoch_end(self) -> None:
        self.test_result = self.test_metrics.compute_with_ci()
        if is_distributed():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, (self.predictions, self.test_targets))
            self.predictions = [p for part in gathered for p in part[0]]
            self.test_targets = [t for part in gathered for t in part[1]]
        self.log_dict(
            {f"test/{n}": r["mean"] for n, r in self.test_result.items() if n != "num_users"}
        )
