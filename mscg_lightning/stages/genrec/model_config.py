"""Hyperparameters of :class:`~mscg_lightning.stages.genrec.model.GenRecT5` and their checks.

`GenRecConfig` validates its switches (FFN, position bias, dropout mode, encoder attention,
similarity attention) and derives the dual-bias bucket counts from the token layout;
``model.py`` re-exports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mscg_lightning.errors import MscgError
from mscg_lightning.stages.genrec.layers import DROPOUT_MODES

if TYPE_CHECKING:
    from mscg_lightning.stages.genrec.tokens import TokenLayout

ENCODER_ATTENTIONS = ("bidirectional", "item_causal")

#: T5 sizes and switches that GenRecModule and MacrecModule both take as init arguments of the
#: same name and hand to :class:`GenRecConfig` unchanged.
SHARED_T5_ARGS = (
    "d_model",
    "num_heads",
    "d_kv",
    "d_ff",
    "encoder_layers",
    "decoder_layers",
    "dropout",
    "ffn",
    "position_bias",
    "item_buckets",
    "item_max_distance",
    "code_buckets",
    "code_max_distance",
    "check_bucket_sum",
    "activation_checkpointing",
)


def shared_t5_args(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`SHARED_T5_ARGS` of a module's hyperparameters, as GenRecConfig keywords."""
    return {name: hparams[name] for name in SHARED_T5_ARGS}


@dataclass
class GenRecConfig:
    """Hyperparameters of :class:`GenRecT5`.

    The paper gives 8 heads x 64 and MLP 2048; it does not give d_model or the layer count, so
    those follow TIGER (d_model 128, 4 encoder + 4 decoder layers).
    """

    vocab_size: int
    target_offsets: tuple[int, ...]  # input id of code 0 at each target level
    target_sizes: tuple[int, ...]  # output vocabulary size of each target level
    tokens_per_item: int  # history tokens per item (flat positions for the "t5" bias)
    d_model: int = 128
    num_heads: int = 8
    d_kv: int = 64
    d_ff: int = 2048
    encoder_layers: int = 4
    decoder_layers: int = 4
    dropout: float = 0.1
    ffn: str = "relu"  # "relu" (T5 v1.0, TIGER) or "gated-gelu" (T5 v1.1)
    position_bias: str = "dual"  # "dual" (paper) or "t5" (ablation "w/o Pos. Emb.")
    num_buckets: int = 32  # T5 bias: encoder in "t5" mode, decoder always
    max_distance: int = 128
    # Dual bias (paper): item + code buckets = T5's 32. None = derived from the layout: one code
    # bucket per signed within-item offset (2T-1 for T tokens per item, exact), the rest of the
    # 32 to the item bias (T5's bidirectional log buckets up to item_max_distance items).
    item_buckets: int | None = None
    item_max_distance: int = 20
    code_buckets: int | None = None
    # None = T-1 (the largest within-item offset) when code_buckets can hold every signed offset,
    # else 8: fewer code buckets fall back to T5's log-spaced buckets (the former fixed scheme).
    code_max_distance: int | None = None
    check_bucket_sum: bool = True  # False: item + code buckets may differ from num_buckets
    tie_output: bool = False
    layer_norm_eps: float = 1e-6
    # Recompute each encoder layer in the backward pass instead of keeping its activations
    # (B x S x d_ff per layer dominates memory with long multimodal histories); same results.
    activation_checkpointing: bool = False
    # "t5" (paper): dropout on attention probabilities, sublayer outputs and inside the FFN;
    # "fast": same rate, DropKey attention dropout (fused kernel kept), no FFN-inner dropout.
    dropout_mode: str = "t5"
    # "bidirectional" (paper): every history token sees every other; "item_causal": a token sees
    # its own item's tokens and earlier items' (what one-pass window training needs).
    encoder_attention: str = "bidirectional"
    # BBQRec (issue 20; triple_tokens.py, similarity_attention.py), all off by default.
    # Triple tokens: layout ids [triple_start, + sum(triple_sizes)) are one modality's dense
    # triples (V_l per level, then the collision size), embedded by TripleTokens.
    triple_start: int = 0
    triple_sizes: tuple[int, ...] = ()
    triple_signals: int = 0
    triple_codebook_size: int = 0
    triple_target: bool = False  # the decoder generates that modality: tied triple head
    # Similarity-enhanced encoder self-attention (paper Eq. 17) over K + 1 buckets.
    sim_attention: bool = False
    sim_buckets: int = 100
    sim_init: str = "ones"  # "ones" (starts as plain attention) or "paper" (U(0, 0.01))

    def __post_init__(self) -> None:
        self.target_offsets = tuple(int(o) for o in self.target_offsets)
        self.target_sizes = tuple(int(s) for s in self.target_sizes)
        if len(self.target_offsets) != len(self.target_sizes):
            raise MscgError("genrec target_offsets and target_sizes must have the same length.")
        if self.ffn not in ("relu", "gated-gelu"):
            raise MscgError(f"genrec ffn must be 'relu' or 'gated-gelu', got '{self.ffn}'.")
        if self.position_bias not in ("dual", "t5"):
            raise MscgError(
                f"genrec position_bias must be 'dual' or 't5', got '{self.position_bias}'."
            )
        if self.dropout_mode not in DROPOUT_MODES:
            raise MscgError(
                f"genrec dropout_mode must be one of {', '.join(DROPOUT_MODES)}, "
                f"got '{self.dropout_mode}'."
            )
        if self.encoder_attention not in ENCODER_ATTENTIONS:
            raise MscgError(
                f"genrec encoder_attention must be one of {', '.join(ENCODER_ATTENTIONS)}, "
                f"got '{self.encoder_attention}'."
            )
        if self.sim_init not in ("ones", "paper") or self.sim_buckets < 1:
            raise MscgError(
                f"genrec sim_init must be 'ones' or 'paper' and sim_buckets >= 1, got "
                f"'{self.sim_init}' and {self.sim_buckets}."
            )
        self._resolve_buckets()

    def _resolve_buckets(self) -> None:
        """Fill in the derived dual-bias bucket counts and check them (see the fields)."""
        widest = self.tokens_per_item - 1  # largest |within-item offset|
        if self.code_max_distance is None:
            fits = self.code_buckets is None or self.code_buckets >= 2 * widest + 1
            self.code_max_distance = widest if fits else 8
        if self.code_buckets is None:
            self.code_buckets = 2 * self.code_max_distance + 1
        if self.item_buckets is None:
            self.item_buckets = self.num_buckets - self.code_buckets
            if self.position_bias == "dual" and self.item_buckets < 4:
                raise MscgError(
                    f"genrec's {self.code_buckets} within-item buckets leave "
                    f"{self.item_buckets} of num_buckets={self.num_buckets} to the item bias "
                    "(needs >= 4): set fewer code_buckets (log-spaced), or item_buckets with "
                    "check_bucket_sum false."
                )
        total = self.item_buckets + self.code_buckets
        if self.position_bias == "dual" and self.check_bucket_sum and total != self.num_buckets:
            raise MscgError(
                f"genrec item_buckets={self.item_buckets} + code_buckets={self.code_buckets} "
                f"must sum to num_buckets={self.num_buckets} (paper), or set "
                "check_bucket_sum false."
            )
        checks = [("", self.num_buckets, self.max_distance)]
        if self.position_bias == "dual":
            checks.append(("item_", self.item_buckets, self.item_max_distance))
            if not self.code_buckets_exact:
                checks.append(("code_", self.code_buckets, self.code_max_distance))
            elif self.code_max_distance < 1:
                raise MscgError(f"genrec code_max_distance={self.code_max_distance} must be >= 1.")
        for name, buckets, dist in checks:
            # bidirectional T5 bucketing: buckets/4 exact distances, the rest log-spaced up to dist
            if buckets < 4 or dist <= buckets // 4:
                raise MscgError(
                    f"genrec {name}buckets={buckets} needs >= 4 and {name}max_distance={dist} "
                    f"> {buckets // 4}."
                )

    @property
    def code_buckets_exact(self) -> bool:
        """True when every signed within-item offset up to code_max_distance has its own bucket."""
        return self.code_buckets >= 2 * self.code_max_distance + 1

    @classmethod
    def from_layout(
        cls, layout: TokenLayout, triple: dict | None = None, **kwargs: object
    ) -> GenRecConfig:
        """Config whose vocabulary and target levels come from a :class:`TokenLayout`.

        ``triple``: ``{"modality", "signals", "codebook_size"}`` of a bbq (triple-token)
        modality of the layout, embedded by ``TripleTokens``; None: none.
        """
        if triple is not None:
            m = layout.modalities.index(triple["modality"])
            kwargs.update(
                triple_start=layout.offsets[m][0],
                triple_sizes=layout.vocab_sizes[m],
                triple_signals=int(triple["signals"]),
                triple_codebook_size=int(triple["codebook_size"]),
                triple_target=m == layout.target_index,
            )
        return cls(
            vocab_size=layout.vocab_size,
            target_offsets=layout.target_offsets,
            target_sizes=layout.target_sizes,
            tokens_per_item=layout.tokens_per_item,
            **kwargs,  # type: ignore[arg-type]
        )
