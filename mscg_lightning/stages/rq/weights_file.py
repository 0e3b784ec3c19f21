"""A module's weights with JSON metadata in one safetensors file, and reading one back.

The quantizers (``quantizer.py``), the tokenizers saved beside them and :class:`RQModule`'s
codebook file share this format; each names its own metadata key and kind.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from mscg_lightning.errors import MscgError


def write_weights(module: nn.Module, path: str | Path, metadata: dict[str, str]) -> None:
    """Write ``module``'s state dict (CPU, contiguous) and ``metadata`` to ``path``."""
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata=metadata)


def read_weights(path: str | Path, what: str) -> tuple[dict[str, str], dict[str, Tensor]]:
    """Metadata and tensors of the safetensors file ``path``; ``what`` (e.g. "Quantizer file")
    starts the message when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise MscgError(f"{what} {path} does not exist.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path))
    except Exception as err:  # safetensors raises several types for a corrupt file
        raise MscgError(f"{what} {path} is not a readable safetensors file ({err}).") from err
    return metadata, state
