"""Step time of GenRec window training with and without BBQRec's similarity attention.

Random catalogue (text codes + a bbq triple modality, 2000 items), batch 64, 20 items per
window, paper-size T5 (d_model 128, 8 x 64 heads, 4 + 4 layers, d_ff 1024), ``fast`` dropout.
Prints the fastest of 3 steps after one warm-up step per setting.

    OMP_NUM_THREADS=1 python benchmarks/bbq_sim_cost.py
"""

from __future__ import annotations

import time

import torch

from mscg_lightning.stages.bbq.triples import compact_vocabulary, join_triples
from mscg_lightning.stages.genrec.module import GenRecModule


def catalogue(n: int = 2000, signals: int = 2, k: int = 8) -> dict:
    raw = join_triples(torch.randint(0, k, (n, signals, 2)), k)
    dense, vocab = compact_vocabulary(raw)
    seen: dict[tuple, int] = {}
    collision = []
    for row in raw.tolist():  # rank of each item among those sharing its triples
        collision.append(seen.get(tuple(row), 0))
        seen[tuple(row)] = collision[-1] + 1
    bbq = torch.cat([dense, torch.tensor(collision)[:, None]], 1)
    layout = {
        "modalities": ["text", "bbq"],
        "vocab_sizes": [[8, 8, 8], [len(v) for v in vocab] + [max(collision) + 1]],
        "target": "bbq",
        "triple": {"modality": "bbq", "signals": signals, "codebook_size": k},
    }
    text = torch.randint(0, 8, (n, 3))
    return {"codes": torch.stack([text, bbq], 1), "layout": layout, "triples": vocab, "n": n}


def main() -> None:
    torch.manual_seed(0)
    cat = catalogue()
    sizes = dict(d_model=128, num_heads=8, d_kv=64, d_ff=1024, encoder_layers=4, decoder_layers=4)
    batch = {
        "history": torch.randint(0, cat["n"], (64, 20)),
        "targets": torch.randint(0, cat["n"], (64, 20)),
    }
    for sim in (False, True):
        torch.manual_seed(0)
        module = GenRecModule(
            token_layout=cat["layout"],
            sim_attention=sim,
            encoder_attention="item_causal",
            dropout_mode="fast",
            check_bucket_sum=False,
            **sizes,
        ).train()
        present = torch.ones(cat["n"], 2, dtype=torch.bool)
        vectors = torch.randn(cat["n"], 16)
        module.set_catalogue(cat["codes"], present, triples=cat["triples"], item_vectors=vectors)
        opt = torch.optim.AdamW(module.parameters())
        times = []
        for _ in range(4):
            start = time.perf_counter()
            loss, _ = module._window_loss(batch, 0.0)
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - start)
        print(f"sim_attention={sim}: {min(times[1:]):.2f} s per step")


if __name__ == "__main__":
    main()
