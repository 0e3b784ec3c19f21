"""GenRecModule: Lightning glue around the generative T5 recommender.

The pure pieces live beside it: ``tokens`` (history -> encoder tokens, modality masking),
``model`` (the T5 with the dual position bias), ``prefix_index`` (permissible codes),
``losses`` (constrained loss, Eq. 6) and ``beam_search``. This module only wires them to
batches from :class:`~mscg_lightning.data.datamodule.SequenceDataModule`, logs, and ranks.

The catalogue (every item's codes per modality) is not a hyperparameter: the stage attaches it
with :meth:`GenRecModule.set_catalogue` before fitting or testing; it is rebuilt from the codes
artifacts rather than stored in checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from mscg_lightning.artifacts import is_distributed
from mscg_lightning.errors import MscgError
from mscg_lightning.metrics import RetrievalMetrics
from mscg_lightning.stages.genrec.beam_search import beam_search
from mscg_lightning.stages.genrec.losses import (
    beam_scoring_for,
    full_vocab_targets,
    generative_loss,
    training_mode,
)
from mscg_lightning.stages.genrec.model import GenRecConfig, GenRecT5
from mscg_lightning.stages.genrec.model_config import shared_t5_args
from mscg_lightning.stages.genrec.prefix_index import PrefixIndex
from mscg_lightning.stages.genrec.tokens import HistoryTokenizer, TokenLayout


class GenRecModule(L.LightningModule):
    """MSCGRec's sequence model; TIGER with one modality in and out and configs/model/tiger.yaml.

    Args:
        token_layout: ``{"modalities": [...], "vocab_sizes": [[...], ...], "target": "collab"}``
            (filled in by the pipeline from the codes artifacts).
        d_model, num_heads, d_kv, d_ff, encoder_layers, decoder_layers, dropout, ffn: T5 sizes
            [paper: 8 heads x 64, MLP 2048; d_model 128 and 4+4 layers as in TIGER].
        position_bias: ``dual`` (item + within-item buckets, paper) or ``t5`` (ablation).
        item_buckets, item_max_distance, code_buckets, code_max_distance: the dual bias's
            buckets [paper: item + code = T5's 32]. Default (None): one code bucket per signed
            within-item offset (2T-1 for T tokens per item), the rest to the item bias (T5's
            log buckets up to ``item_max_distance`` items); see ``GenRecConfig``.
        check_bucket_sum: refuse item + code buckets other than 32 (False: allow any).
        tie_output: share the output table with the input embeddings.
        activation_checkpointing: recompute encoder layers in the backward pass (less memory,
            about a third more compute; same results).
        dropout_mode: ``t5`` (paper/T5 dropout sites) or ``fast`` (same rate; DropKey attention
            dropout that keeps the fused attention kernel, no FFN-inner dropout; see ``layers``).
        encoder_attention: ``bidirectional`` (paper) or ``item_causal`` (a token sees its own
            item and earlier items; needed by ``data.init_args.train_mode: windows``, which then
            trains every target of a window in one pass).
        constrained_training: ``constrained`` (paper Eq. 6: each level's softmax over the
            permissible codes only), ``per_level`` (over the level's codes) or ``full_vocab``
            (over the whole output vocabulary: the paper's "w/o Const. Train." and TIGER).
            The former booleans still load: True = constrained, False = per_level.
        mask_prob: probability of masking one random modality of each history item in training
            (paper: 0.75 for "w/ Masking"; 0 = off).
        eval_masked_modalities: modalities masked in every history item at evaluation
            (Shapley values, missing-modality studies).
        lr, weight_decay, warmup_steps: AdamW with linear warm-up and cosine decay [lr 2e-3].
        num_beams, top_k: constrained beam search [20 beams]; top_k items ranked per user.
        constrained_decoding: False decodes with the model's softmax, unmasked (comparison).
        beam_scoring: ``renormalized`` (paper: Eq. 6 scores), ``masked_softmax`` (the model's
            softmax with impermissible codes at -inf, as HF ``prefix_allowed_tokens_fn``) or
            ``auto`` (renormalized for ``constrained`` models, masked_softmax otherwise).
        val_metric: ``ndcg@10`` (beam search on validation users) or ``loss`` (cheaper).
        ks: cut-offs of the retrieval metrics.
        triple_embedding: a bbq (triple-token) codes source (``token_layout["triple"]``, set by
            the stage) is embedded as ``sum`` (ours, default: sum of the signals' code
            embeddings + a level embedding, tied head) or ``full`` (one row per occurring
            triple, the ordinary tables and head). Ignored without a bbq source.
        inherit_code_embeddings: initialise the ``sum`` tables from the bbq codebooks (paper
            Table 4 ablation; needs d_model = the tokenizer's latent_dim).
        sim_attention, sim_buckets, sim_init: BBQRec's similarity-enhanced encoder attention
            over the bbq item vectors [paper: on, K = 100]; ``sim_init`` ``ones`` (ours: starts
            as plain attention) or ``paper`` (U(0, 0.01)).
    """

    def __init__(
        self,
        token_layout: dict[str, Any] | None = None,
        d_model: int = 128,
        num_heads: int = 8,
        d_kv: int = 64,
        d_ff: int = 2048,
        encoder_layers: int = 4,
        decoder_layers: int = 4,
        dropout: float = 0.1,
        ffn: Literal["relu", "gated-gelu"] = "relu",
        position_bias: Literal["dual", "t5"] = "dual",
        item_buckets: int | None = None,
        item_max_distance: int = 20,
        code_buckets: int | None = None,
        code_max_distance: int | None = None,
        check_bucket_sum: bool = True,
        tie_output: bool = False,
        activation_checkpointing: bool = False,
        dropout_mode: Literal["t5", "fast"] = "t5",
        encoder_attention: Literal["bidirectional", "item_causal"] = "bidirectional",
        constrained_training: Literal["constrained", "per_level", "full_vocab"] | bool = (
            "constrained"
        ),
        mask_prob: float = 0.0,
        eval_masked_modalities: list[str] | None = None,
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 500,
        num_beams: int = 20,
        top_k: int = 10,
        constrained_decoding: bool = True,
        beam_scoring: Literal["renormalized", "masked_softmax", "auto"] = "auto",
        val_metric: Literal["ndcg@10", "loss"] = "ndcg@10",
        ks: Sequence[int] = (1, 5, 10),
        triple_embedding: Literal["sum", "full"] = "sum",
        inherit_code_embeddings: bool = False,
        sim_attention: bool = False,
        sim_buckets: int = 100,
        sim_init: Literal["ones", "paper"] = "ones",
    ) -> None:
        super().__init__()
        if token_layout is None:
            raise MscgError(
                "model.init_args.token_layout is not set: the genrec stage fills it in."
            )
        self.save_hyperparameters()
        # store the mode's name (checkpoints saved with the former booleans load too)
        self.hparams.constrained_training = training_mode(constrained_training)
        self.beam_scoring = beam_scoring_for(beam_scoring, self.hparams.constrained_training)
        self.layout = TokenLayout(
            token_layout["modalities"], token_layout["vocab_sizes"], token_layout["target"]
        )
        triple = check_bbq_options(
            token_layout.get("triple"), triple_embedding, inherit_code_embeddings
        )
        self.model = GenRecT5(
            GenRecConfig.from_layout(
                self.layout,
                triple=triple,
                sim_attention=sim_attention,
                sim_buckets=sim_buckets,
                sim_init=sim_init,
                tie_output=tie_output,
                dropout_mode=dropout_mode,
                encoder_attention=encoder_attention,
                **shared_t5_args(self.hparams),
            )
        )
        self.ks = tuple(ks)
        if top_k < max(self.ks) or top_k > num_beams:
            raise MscgError(
                f"genrec needs max(ks)={max(self.ks)} <= top_k={top_k} <= num_beams={num_beams}."
            )
        self.eval_masked = list(eval_masked_modalities or [])
        self.val_metrics = RetrievalMetrics(self.ks)
        self.test_metrics = RetrievalMetrics(self.ks)
        self.tokenizer: HistoryTokenizer | None = None
        self.index: PrefixIndex | None = None
        self.predictions: list[tuple[Tensor, Tensor, Tensor]] = []

    # ------------------------------------------------------------------------- catalogue
    def set_catalogue(
        self,
        codes: Tensor,
        present: Tensor,
        triples: list[Tensor] | None = None,
        item_vectors: Tensor | None = None,
    ) -> None:
        """Attach every item's codes: codes [N, M, P_max], present [N, M] (see tokens.py).

        Builds the history tokenizer and the prefix index over the target modality's tuples
        of the items that have it. BBQRec: ``triples`` (dense id -> raw triple [V_l] per level,
        for ``triple_embedding: sum``) and ``item_vectors`` v [N, D] (for ``sim_attention``).
        """
        if self.model.triple is not None:
            if triples is None:
                raise MscgError("genrec: the bbq triple vocabularies were not given.")
            self.model.triple.set_triples(triples)
        if self.hparams.sim_attention:
            if item_vectors is None or item_vectors.shape[0] != present.shape[0]:
                raise MscgError(
                    "genrec model.init_args.sim_attention needs the item vectors of a bbq "
                    "codes source in genrec.modalities (its embeddings.parquet), one per item."
                )
            self.model.set_item_vectors(item_vectors)
        self.tokenizer = HistoryTokenizer(self.layout, codes, present)
        t = self.layout.target_index
        has_target = present[:, t]
        if not has_target.any():
            raise MscgError(f"no item has codes of the target modality '{self.layout.target}'.")
        tuples = self.tokenizer.target_codes_table[has_target]
        item_ids = torch.nonzero(has_target).squeeze(1)
        self.index = PrefixIndex(tuples, self.layout.target_sizes, item_ids=item_ids)
        self.tokenizer.to(self.device)
        self.index.to(self.device)

    def inherit_codebooks(self, codebooks: Tensor) -> None:
        """``inherit_code_embeddings``: copy the bbq codebooks [T, L, K, D] into the ``sum``
        tables (before training)."""
        if self.hparams.inherit_code_embeddings:
            if codebooks.shape[-1] != self.hparams.d_model:
                raise MscgError(
                    "genrec model.init_args.inherit_code_embeddings needs d_model equal to the "
                    f"bbq tokenizer's latent_dim ({codebooks.shape[-1]}), got "
                    f"{self.hparams.d_model}."
                )
            self.model.triple.embedding.inherit_codebooks(codebooks)

    def on_fit_start(self) -> None:
        self._check_catalogue()
        datamodule = getattr(self.trainer, "datamodule", None)
        windows = getattr(datamodule, "train_mode", "samples") == "windows"
        if windows and self.hparams.encoder_attention != "item_causal":
            raise MscgError(
                "genrec data.init_args.train_mode 'windows' needs "
                "model.init_args.encoder_attention 'item_causal' (a bidirectional encoder would "
                "let earlier targets see later items); set it or use train_mode 'samples'."
            )

    def on_test_start(self) -> None:
        self._check_catalogue()

    def _check_catalogue(self) -> None:
        if self.tokenizer is None or self.index is None:
            raise MscgError("GenRecModule.set_catalogue was not called before fit/test.")
        self.tokenizer.to(self.device)
        self.index.to(self.device)

    # -------------------------------------------------------------------------- training
    def _loss(
        self, batch: dict[str, Tensor], mask_prob: float, masked: Sequence[str] = ()
    ) -> tuple[Tensor, int]:
        target = self.tokenizer.target_codes(batch["target"])  # [B, D]
        keep = (target >= 0).all(dim=1)  # targets without target-modality codes cannot be trained
        if not keep.any():
            # Nothing to learn from: weight the batch zero (a mean over no targets is NaN). The
            # zero still spans every parameter, so backward and DDP's gradient sync run as usual.
            return torch.stack([p.sum() for p in self.parameters()]).sum() * 0.0, 0
        history = batch["history"][keep]
        inputs = self.tokenizer(history, mask_prob=mask_prob, masked_modalities=masked)
        buckets = self.model.similarity_buckets(history)
        target = target[keep]
        total = self._target_loss(
            lambda full: self.model(*inputs, target, full_vocab=full, item_buckets=buckets), target
        )
        return total / target.numel(), int(keep.sum())

    def _target_loss(self, logits_of: Any, target: Tensor) -> Tensor:
        """Summed NLL of target codes [N, D]; ``logits_of(full_vocab)`` gives their logits."""
        mode = self.hparams.constrained_training
        if mode == "full_vocab":
            full = full_vocab_targets(target, self.layout.target_sizes)
            return generative_loss(logits_of(True), full, reduction="sum")
        allowed = self.index.permissible(target) if mode == "constrained" else None
        return generative_loss(logits_of(False), target, allowed, reduction="sum")

    def _window_loss(self, batch: dict[str, Tensor], mask_prob: float) -> tuple[Tensor, int]:
        """One pass per window: ``history``/``targets`` [B, T] (-1 padded left, aligned).

        Every target with target-modality codes is decoded from the item-causal encoder states
        of the items up to its position; equal to per-sample training on the same (prefix,
        target) pairs (tested). The summed NLL is divided by ``loss_norm`` x D when the batch
        carries it (every target of the epoch weighs the same), else by the number of codes.
        """
        inputs = self.tokenizer(batch["history"], mask_prob=mask_prob)
        width = inputs.input_ids.shape[1] // self.layout.tokens_per_item
        targets = batch["targets"][:, batch["targets"].shape[1] - width :]  # same trimming
        codes = self.tokenizer.target_codes(targets.clamp(min=0))  # [B, T, D]
        keep = (targets >= 0) & (codes >= 0).all(dim=-1)
        n = int(keep.sum())
        if n == 0:
            return torch.stack([p.sum() for p in self.parameters()]).sum() * 0.0, 0
        enc = self.model.encode(*inputs, self.model.similarity_buckets(batch["history"]))
        hidden = self.model.decode_windows(
            enc, inputs.attention_mask, self.layout.tokens_per_item, codes.clamp(min=0)
        )[keep]  # [N, D, d]
        target = codes[keep]
        total = self._target_loss(lambda full: self.model.logits(hidden, full), target)
        norm = batch["loss_norm"] if "loss_norm" in batch else torch.tensor(float(n))
        return total / (norm * target.shape[1]), n

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        if "targets" in batch:
            loss, n = self._window_loss(batch, self.hparams.mask_prob)
        else:
            loss, n = self._loss(batch, self.hparams.mask_prob)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    # ------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def rank(
        self, history: Tensor, masked_modalities: Sequence[str] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Top-K item_idx [B, K] and their scores [B, K] for histories [B, H] (-1 padded)."""
        masked = self.eval_masked if masked_modalities is None else list(masked_modalities)
        inputs = self.tokenizer(history, masked_modalities=masked)
        result = beam_search(
            self.model,
            self.index,
            *inputs,
            num_beams=self.hparams.num_beams,
            top_k=self.hparams.top_k,
            constrained=self.hparams.constrained_decoding,
            scoring=self.beam_scoring,
            full_vocab=self.hparams.constrained_training == "full_vocab",
            item_buckets=self.model.similarity_buckets(history),
        )
        return result.items, result.scores

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        loss, n = self._loss(batch, 0.0, self.eval_masked)
        self.log(
            "val/loss",
            loss,
            on_epoch=True,
            prog_bar=self.hparams.val_metric == "loss",
            batch_size=n,
            sync_dist=True,
        )
        if self.hparams.val_metric != "loss":
            items, _ = self.rank(batch["history"])
            self.val_metrics.update(items, batch["target"], batch["user_idx"])

    def on_validation_epoch_end(self) -> None:
        if self.hparams.val_metric != "loss":
            for name, value in self.val_metrics.compute().items():
                self.log(f"val/{name}", value, prog_bar=name == "ndcg@10")

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()
        self.predictions = []
        self.test_result = None

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        items, scores = self.rank(batch["history"])
        self.test_metrics.update(items, batch["target"], batch["user_idx"])
        self.predictions.append((batch["user_idx"].cpu(), items.cpu(), scores.float().cpu()))

    def on_test_epoch_end(self) -> None:
        self.test_result = self.test_metrics.compute_with_ci()
        if is_distributed():
            # Every rank ranked its own users: gather them so rank 0 exports all predictions.
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.predictions)
            self.predictions = [p for part in gathered for p in part]
        self.log_dict(
            {f"test/{n}": r["mean"] for n, r in self.test_result.items() if n != "num_users"}
        )

    # ------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, param in self.named_parameters():
            # the similarity tables (init ones = plain attention) must not decay towards zero
            plain = param.ndim < 2 or "norm" in name or name.endswith("sim.table")
            (no_decay if plain else decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(self.hparams.warmup_steps, total // 10 + 1)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def check_bbq_options(
    triple: dict[str, Any] | None, triple_embedding: str, inherit_code_embeddings: bool
) -> dict[str, Any] | None:
    """The ``triple`` spec for :class:`GenRecConfig` (None: ordinary tables); refuses bad
    combinations of the BBQRec switches in one sentence."""
    if triple_embedding not in ("sum", "full"):
        raise MscgError(
            f"genrec model.init_args.triple_embedding must be 'sum' or 'full', got "
            f"'{triple_embedding}'."
        )
    if inherit_code_embeddings and (triple is None or triple_embedding != "sum"):
        raise MscgError(
            "genrec model.init_args.inherit_code_embeddings needs a bbq codes source in "
            "genrec.modalities and triple_embedding 'sum'."
        )
    return triple if triple is not None and triple_embedding == "sum" else None
