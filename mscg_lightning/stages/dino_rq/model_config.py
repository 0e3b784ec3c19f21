"""`RQDinoConfig`: the hyper-parameters of RQ-DINO (model.py), DINOv2's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mscg_lightning.stages.dino_rq.losses import Centering


@dataclass
class RQDinoConfig:
    """Hyper-parameters of RQ-DINO (DINOv2 defaults; paper: 3 x 256 codes, commitment 0.01)."""

    backbone: str | None = None  # HF id or local dir; None = random ViT-S/14
    backbone_config: dict[str, Any] = field(default_factory=dict)  # Dinov2Config overrides
    local_files_only: bool = False
    n_prototypes: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    # DINOv2 unties the iBOT head from the DINO head (its paper, Sec. 4: tied heads underfit
    # at the patch level); set False to share the DINO head.
    ibot_separate_head: bool = True
    ibot_n_prototypes: int | None = None  # None: same as n_prototypes
    rq_levels: int = 3
    rq_codebook_size: int = 256
    rq_decay: float = 0.99
    rq_kmeans_init: bool = True
    # EMA count (assignments per step) below which a code is restarted. A step has only about
    # batch * 6 crops for 256 codes, so the quantizer's default of 1.0 would restart most codes.
    rq_dead_code_threshold: float = 0.1
    quantize_local_crops: bool = True  # Eq. 4 quantizes every student view
    quantize: bool = True  # False: plain DINO (no quantizer; e.g. to pretrain for Table 3c)
    # Recent student CLS embeddings of global crops kept for `refit_codebooks` (k-means).
    rq_refit_samples: int = 4096
    # What the codebook statistics (EMA updates, k-means init and refits) see: clean_global =
    # the student CLS of global crops without iBOT masking, the views closest to the clean
    # centre crops whose codes are exported; all_views = every quantized view (masked global
    # and small local crops; the statistics before issue 18).
    rq_statistics: Literal["clean_global", "all_views"] = "clean_global"
    # k-means init on this many clean CLS embeddings gathered over batches (over all ranks);
    # until then the student head sees the unquantized CLS. None: 10 x rq_codebook_size;
    # 0: the quantizer's own init on the first batch.
    rq_init_samples: int | None = None
    student_temp: float = 0.1
    center_momentum: float = 0.9
    centering: Centering = "centering"
    sinkhorn_iterations: int = 3
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    commit_weight: float = 0.01
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = 0.5
