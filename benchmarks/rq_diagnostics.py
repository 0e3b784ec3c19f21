"""Code diagnostics on Amazon Beauty: our text (MiniLM) and SASRec codes next to LETTER's codes.

    python benchmarks/rq_diagnostics.py                       # runs the chain stages it needs
    python benchmarks/rq_diagnostics.py --text_embed DIR --sasrec DIR   # reuse embeddings artifacts

For each code table: collision rate (share of items whose L-code prefix is shared), largest
group, distinct prefixes, per-level usage (% of the K codes used) and perplexity. Our codes come
from the ``rq`` tokenizer (3 x 256, k-means init, EMA codebooks, dead-code restart) trained on
the embeddings artifacts; LETTER's published codes (``LETTER_Beauty.index.json``, 4 levels) are
read through ``prepare``'s given-codes path. Writes ``benchmarks/results/rq_diagnostics.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
from _common import append_row, write_result  # noqa: E402

from mscg_lightning.artifacts import read_embeddings, read_table  # noqa: E402
from mscg_lightning.cli import main  # noqa: E402
from mscg_lightning.stages.rq.collisions import code_diagnostics  # noqa: E402
from mscg_lightning.stages.rq.module import EmbeddingsDataModule, RQModule  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--run_dir", default=str(REPO / "runs" / "benchmarks" / "rq_beauty"))
    p.add_argument("--text_embed", default=None, help="an existing text_embed artifact to reuse")
    p.add_argument("--sasrec", default=None, help="an existing sasrec artifact to reuse")
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codebook_size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--rqvae_epochs",
        type=int,
        default=100,
        help="also quantize through an RQ-VAE (TIGER's MLP 512-256-128 to a 32-d latent) for "
        "this many epochs; 0 = skip",
    )
    return p.parse_args(argv)


#: TIGER's RQ-VAE: MLP encoder 512-256-128 to a 32-d latent, residual quantization there.
RQVAE = {"kind": "rqvae", "latent_dim": 32, "hidden_dims": [512, 256, 128]}


def quantize(embeddings, args, epochs: int | None = None, **kind) -> np.ndarray:
    """Codes [N, L+1] (with collision level) of an embedding table; ``kind``: RQModule options."""
    L.seed_everything(args.seed)
    model = RQModule(
        dim=embeddings.shape[1], levels=args.levels, codebook_size=args.codebook_size, **kind
    )
    data = EmbeddingsDataModule(embeddings, batch_size=1024, seed=args.seed)
    trainer = L.Trainer(
        max_epochs=epochs or args.epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    codes, _ = model.export_codes(embeddings)
    return codes.numpy()


def summary(diag: dict) -> dict:
    return {
        "items": diag["num_items"],
        "distinct_prefixes": diag["distinct_prefixes"],
        "collision_rate": round(diag["collision_rate"], 4),
        "largest_group": diag["largest_group"],
        "usage_%": [round(lv["usage"], 1) for lv in diag["per_level"]],
        "perplexity": [round(lv["perplexity"], 1) for lv in diag["per_level"]],
    }


def main_benchmark(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    run = Path(args.run_dir)
    base = ["--config", str(REPO / "configs" / "beauty.yaml"), "--run_dir", str(run)]
    base += ["--data_root", args.data_root]
    stages = ["prepare"] + (["text_embed"] if not args.text_embed else [])
    stages += ["sasrec"] if not args.sasrec else []
    # LETTER's codes come in as given codes of the prepared items table.
    given = ["--prepare.given_codes", json.dumps({"letter": "LETTER_Beauty.index.json"})]
    if main(["fit", *base, *given, "--stages", ",".join(stages)]) != 0:
        raise SystemExit("mscg fit failed")
    text_dir = Path(args.text_embed or run / "text_embed")
    sasrec_dir = Path(args.sasrec or run / "sasrec")

    rows = {}
    for name, directory in (
        ("MiniLM text (ours, rq 3x256)", text_dir),
        ("SASRec (ours, rq 3x256)", sasrec_dir),
    ):
        table = read_embeddings(directory)
        codes = quantize(table.embeddings, args)
        rows[name] = summary(code_diagnostics(codes, args.codebook_size, levels=args.levels))
        if args.rqvae_epochs:
            codes = quantize(table.embeddings, args, epochs=args.rqvae_epochs, **RQVAE)
            diag = code_diagnostics(codes, args.codebook_size, levels=args.levels)
            rows[name.replace("rq 3x256", "rqvae 32-d latent, 3x256")] = summary(diag)
    items = read_table(run / "prepared" / "items", columns=["item_idx", "codes_letter"])
    letter = np.array(items.column("codes_letter").to_pylist(), dtype=np.int64)
    k = int(letter.max()) + 1
    # LETTER's tuples: 3 semantic levels + a 4th level; both views are reported.
    rows["LETTER (published, first 3 levels)"] = summary(code_diagnostics(letter, k, levels=3))
    rows["LETTER (published, all 4 levels)"] = summary(code_diagnostics(letter, k, levels=4))

    header = "| codes | items | distinct prefixes | collision rate | largest group | usage % per level | perplexity per level |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['items']} | {r['distinct_prefixes']} | {r['collision_rate']:.4f} | "
            f"{r['largest_group']} | {r['usage_%']} | {r['perplexity']} |"
        )
    table = "\n".join(lines)
    print(table)
    wall = time.perf_counter() - start
    payload = {"dataset": "beauty", "rows": rows, "table": table, "wall_seconds": wall}
    path = write_result("rq_diagnostics", payload)
    append_row(
        "rq_diagnostics",
        "; ".join(
            f"{n}: collisions {r['collision_rate']:.3f}, largest {r['largest_group']}"
            for n, r in rows.items()
        ),
        wall,
    )
    print(f"[rq_diagnostics] wrote {path}")
    return payload


if __name__ == "__main__":
    main_benchmark()
