"""A bbq artifact as a genrec codes source (BBQRec, issue 20).

A codes artifact whose manifest says ``token: triple`` (stage kind ``bbq``) holds L levels of
(ID, text, image) triples below K^S plus a collision level. Genrec compacts each triple level to
the triples that occur (dense ids in sorted triple order, ``bbq.triples.compact_vocabulary``), so
its layout has at most N rows per level; the dense -> raw maps, the item vectors v_i
(``embeddings.parquet``, similarity attention) and the codebooks (``inherit_code_embeddings``)
come from the same artifact. At most one bbq source per genrec section.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from mscg_lightning.artifacts import Manifest, read_embeddings
from mscg_lightning.errors import MscgError
from mscg_lightning.stages.bbq.triples import compact_vocabulary


def is_triple(manifest: Manifest) -> bool:
    """True for a bbq codes artifact (manifest extra ``token: triple``)."""
    return manifest.extra.get("token") == "triple"


@dataclass
class BBQSource:
    """The bbq codes source of a genrec section.

    ``triples[l]``: raw triple tokens [V_l] that dense ids of level l index (sorted).
    """

    modality: str
    directory: Path
    signals: int
    codebook_size: int
    triples: list[Tensor]

    @classmethod
    def from_codes(cls, modality: str, directory: Path, extra: dict, codes: Tensor) -> BBQSource:
        """From the artifact's manifest ``extra`` and its raw codes [n, L+1]."""
        _, vocab = compact_vocabulary(codes[:, :-1])
        return cls(
            modality,
            Path(directory),
            len(extra["signals"]),
            int(extra["signal_codebook_size"]),
            vocab,
        )

    def compact(self, codes: Tensor) -> Tensor:
        """Raw triple codes [n, L+1] -> dense ids per level (collision level unchanged)."""
        out = codes.clone()
        for level, vocab in enumerate(self.triples):
            out[:, level] = torch.searchsorted(vocab, codes[:, level].contiguous())
        return out

    def layout_entry(self) -> dict:
        """``token_layout["triple"]``: what :class:`GenRecConfig` needs (JSON-able)."""
        return {
            "modality": self.modality,
            "signals": self.signals,
            "codebook_size": self.codebook_size,
        }

    def item_vectors(self, num_items: int) -> Tensor:
        """v_i of every item [N, S*D] (zero rows for items the artifact lacks)."""
        table = read_embeddings(self.directory, num_items=num_items)
        out = torch.zeros(num_items, table.embeddings.shape[1])
        out[torch.as_tensor(table.item_idx)] = torch.as_tensor(table.embeddings)
        return out

    def codebooks(self) -> Tensor:
        """The tokenizer's codebooks [T, L, K, D] (T = 1 when shared)."""
        from mscg_lightning.stages.bbq.stage import load_model

        model = load_model(self.directory / "codebooks.safetensors")
        return model.model.quantizer.codebooks.detach()


def single_bbq(found: list[BBQSource]) -> BBQSource | None:
    """The one bbq source, None without any; two are refused."""
    if len(found) > 1:
        raise MscgError(
            f"genrec.modalities names {len(found)} bbq (triple-token) sources "
            f"({', '.join(s.modality for s in found)}); at most one is supported."
        )
    return found[0] if found else None
