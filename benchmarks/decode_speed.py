"""Decode speed: our constrained beam search vs `transformers` generate + a Python trie.

One model, trained briefly on synthetic data so that its scores are not flat, decodes the same
users twice:

* ours: ``beam_search`` (prefix index on the device, cross-attention K/V once per user, beams as
  extra query rows, constrained log-softmax of paper Eq. 6);
* baseline: the same weights copied into ``transformers.T5ForConditionalGeneration``
  (``to_hf_t5``; equality of logits is a unit test) and decoded with
  ``generate(num_beams=20, num_return_sequences=10, prefix_allowed_tokens_fn=<nested-dict trie>)``
  as LETTER / MQL4GRec / MACRec do, with its own KV cache and default settings, plus
  ``renormalize_logits=True`` so that its beam scores are the same constrained log-probabilities
  (without it, generate scores with the full-vocabulary softmax and ranks differently). The
  default-settings run (no renormalisation) is timed too; the speedup is taken against the
  faster of the two.

Both sides include the encoder pass; tokenisation is done beforehand for both. Batches of users
alternate between the two sides so that load changes on a shared machine hit both alike.

Synthetic data: ~12K items with text and collaborative codes (3 levels x 256 + collision level;
skewed level-0/1 distributions so that prefixes are shared and collisions occur). Each user has a
favourite collaborative level-0 code; history and target items carry it with probability 0.7, so
the model has something to learn in a short AdamW run (constrained loss, lr 2e-3).

    python benchmarks/decode_speed.py            # full configuration -> results/decode_speed.json
    python benchmarks/decode_speed.py --quick    # < 1 min -> results/decode_speed_quick.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import skewed_codes, timing_machine_info, with_collision_level  # noqa: E402

from mscg_lightning.stages.genrec.beam_search import beam_search  # noqa: E402
from mscg_lightning.stages.genrec.losses import generative_loss  # noqa: E402
from mscg_lightning.stages.genrec.model import GenRecConfig, GenRecT5, to_hf_t5  # noqa: E402
from mscg_lightning.stages.genrec.prefix_index import PrefixIndex  # noqa: E402
from mscg_lightning.stages.genrec.tokens import HistoryTokenizer, TokenLayout  # noqa: E402

FULL = dict(
    items=12_000, history=20, users=256, batch=32, train_steps=60, train_batch=32,
    d_model=128, layers=4, heads=6, d_kv=64, d_ff=1024,
)  # fmt: skip
QUICK = dict(
    items=2_000, history=10, users=96, batch=32, train_steps=20, train_batch=16,
    d_model=128, layers=2, heads=6, d_kv=64, d_ff=1024,
)  # fmt: skip
TINY = dict(
    items=300,
    history=4,
    users=8,
    batch=4,
    train_steps=2,
    train_batch=4,
    d_model=32,
    layers=1,
    heads=2,
    d_kv=16,
    d_ff=64,
)  # fmt: skip  (--tiny: seconds; only checks that the path runs, e.g. gpu_suite.sh --dry-run)
LEVELS, CODEBOOK, BEAMS, TOP_K, LR = 3, 256, 20, 10, 2e-3
Tensor = torch.Tensor


def make_catalogue(n: int, gen: torch.Generator) -> tuple[TokenLayout, HistoryTokenizer, Tensor]:
    skews = (1.0, 1.2, 0.5)
    collab = torch.stack([skewed_codes(gen, n, skew, CODEBOOK) for skew in skews], 1)
    collab = with_collision_level(collab, CODEBOOK)
    text = torch.randint(0, CODEBOOK, (n, LEVELS), generator=gen)
    text = with_collision_level(text, CODEBOOK)
    sizes = [
        [CODEBOOK] * LEVELS + [int(text[:, -1].max()) + 1],
        [CODEBOOK] * LEVELS + [int(collab[:, -1].max()) + 1],
    ]
    layout = TokenLayout(["text", "collab"], sizes, target="collab")
    tok = HistoryTokenizer(
        layout, torch.stack([text, collab], 1), torch.ones(n, 2, dtype=torch.bool)
    )
    return layout, tok, collab


def sample_users(collab: Tensor, n_users: int, length: int, gen: torch.Generator) -> Tensor:
    """Histories + target [n_users, length+1]: items share the user's favourite level-0 code
    with probability 0.7, otherwise uniform."""
    n = len(collab)
    topic_of = collab[:, 0]
    order = torch.argsort(topic_of)
    counts = torch.bincount(topic_of, minlength=CODEBOOK)
    starts = torch.cumsum(counts, 0) - counts
    fav = topic_of[torch.randint(0, n, (n_users,), generator=gen)]  # popular topics more often
    u = torch.rand(n_users, length + 1, generator=gen)
    on_topic = order[starts[fav][:, None] + (u * counts[fav][:, None]).long()]
    random_items = torch.randint(0, n, (n_users, length + 1), generator=gen)
    keep = torch.rand(n_users, length + 1, generator=gen) < 0.7
    return torch.where(keep, on_topic, random_items)


class NestedTrie:
    """GENRE / LETTER-style Python trie of token ids (nested dicts)."""

    def __init__(self, sequences: list[list[int]]) -> None:
        self.root: dict = {}
        for seq in sequences:
            node = self.root
            for token in seq:
                node = node.setdefault(token, {})

    def get(self, prefix: list[int]) -> list[int]:
        node = self.root
        for token in prefix:
            node = node.get(token)
            if node is None:
                return []
        return list(node.keys())


def train(
    model: GenRecT5,
    tok: HistoryTokenizer,
    index: PrefixIndex,
    collab: Tensor,
    cfg: dict,
    gen: torch.Generator,
) -> dict:
    """A short AdamW run with the constrained loss on synthetic users."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    model.train()
    start = time.perf_counter()
    losses = []
    for _ in range(cfg["train_steps"]):
        seq = sample_users(collab, cfg["train_batch"], cfg["history"], gen).to(
            index.full_keys.device
        )
        targets = tok.target_codes(seq[:, -1])
        enc = tok(seq[:, :-1])
        loss = generative_loss(model(*enc, targets), targets, index.permissible(targets))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    k = max(1, len(losses) // 10)
    return {
        "steps": cfg["train_steps"],
        "batch": cfg["train_batch"],
        "lr": LR,
        "seconds": round(time.perf_counter() - start, 1),
        "loss_first": round(sum(losses[:k]) / k, 4),
        "loss_last": round(sum(losses[-k:]) / k, 4),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model, < 1 minute")
    parser.add_argument("--tiny", action="store_true", help="toy size: the path runs (seconds)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both sides (default 1: on a shared 2-core machine more threads "
        "spin against other processes; 0 = torch's default)",
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="users per decode call (both sides)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cfg = dict(TINY if args.tiny else QUICK if args.quick else FULL)
    args.quick = args.quick or args.tiny
    if args.batch:
        cfg["batch"] = args.batch
    out = args.out or REPO / "benchmarks" / "results" / (
        "decode_speed_quick.json" if args.quick else "decode_speed.json"
    )
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    layout, tok, collab = make_catalogue(cfg["items"], gen)
    index = PrefixIndex(collab, layout.target_sizes)
    model = GenRecT5(
        GenRecConfig.from_layout(
            layout,
            d_model=cfg["d_model"],
            num_heads=cfg["heads"],
            d_kv=cfg["d_kv"],
            d_ff=cfg["d_ff"],
            encoder_layers=cfg["layers"],
            decoder_layers=cfg["layers"],
            position_bias="t5",  # HF's T5 bias, so that the weights map 1:1 (see to_hf_t5)
        )  # fmt: skip
    )
    model, index, tok = model.to(device), index.to(device), tok.to(device)
    training = train(model, tok, index, collab, cfg, gen)
    hf = to_hf_t5(model).to(device)
    offsets = torch.tensor(layout.target_offsets, device=device)

    users = sample_users(collab, cfg["users"], cfg["history"], gen)[:, :-1]
    trie = NestedTrie((collab + torch.tensor(layout.target_offsets)).tolist())

    def allowed_tokens(batch_id: int, sent: Tensor) -> list[int]:
        return trie.get(sent.tolist()[1:])  # drop the decoder start token

    def ours(enc) -> Tensor:
        return beam_search(model, index, *enc, num_beams=BEAMS, top_k=TOP_K).items

    def theirs(enc, renormalize: bool) -> Tensor:
        with torch.no_grad():
            seq = hf.generate(
                input_ids=enc.input_ids,
                attention_mask=enc.attention_mask.long(),
                num_beams=BEAMS,
                num_return_sequences=TOP_K,
                max_new_tokens=len(layout.target_sizes),
                do_sample=False,
                prefix_allowed_tokens_fn=allowed_tokens,
                renormalize_logits=renormalize,
            )
        codes = seq[:, 1:] - offsets
        return index.lookup(codes).view(-1, TOP_K)

    users = users.to(device)
    batches = [tok(users[i : i + cfg["batch"]]) for i in range(0, len(users), cfg["batch"])]
    ours(batches[0])  # warm-up both sides
    theirs(batches[0], True)
    sides = {"ours": ours, "hf_renorm": lambda enc: theirs(enc, True)}
    if not args.quick:  # generate with default scoring: timed too, not in --quick (time limit)
        sides["hf_default"] = lambda enc: theirs(enc, False)
    wall = dict.fromkeys(sides, 0.0)
    cpu = dict.fromkeys(sides, 0.0)  # process CPU time: less sensitive to other processes' load
    got: dict[str, list[Tensor]] = {name: [] for name in sides}
    for enc in batches:
        for name, fn in sides.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            got[name].append(fn(enc).cpu())  # .cpu() also waits for the GPU
            wall[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
    items = {k: torch.cat(v) for k, v in got.items()}
    n = len(users)
    same_set = [
        set(a.tolist()) == set(b.tolist()) for a, b in zip(items["ours"], items["hf_renorm"])
    ]
    same_order = (items["ours"] == items["hf_renorm"]).all(1)
    ups = {k: n / v for k, v in wall.items()}
    hf_best = max(v for k, v in ups.items() if k != "ours")
    cpu_ratio = min(v for k, v in cpu.items() if k != "ours") / cpu["ours"]
    if "hf_default" in items:
        same_default = [
            set(a.tolist()) == set(b.tolist()) for a, b in zip(items["ours"], items["hf_default"])
        ]
    result = {
        "benchmark": "decode_speed",
        "quick": args.quick,
        "speedup": round(ups["ours"] / hf_best, 2),
        "agreement": round(sum(same_set) / n, 4),
        "users_per_s": {k: round(v, 2) for k, v in ups.items()},
        "speedup_cpu_time": round(cpu_ratio, 2),
        "cpu_seconds": {k: round(v, 2) for k, v in cpu.items()},
        "agreement_same_order": round(same_order.float().mean().item(), 4),
        "all_items_in_catalogue": bool((items["ours"] >= 0).all()),
        "agreement_with_default_generate": (
            round(sum(same_default) / n, 4) if "hf_default" in items else None
        ),
        "config": {
            "items": cfg["items"],
            "target_levels": list(layout.target_sizes),
            "history_items": cfg["history"],
            "history_tokens": cfg["history"] * layout.tokens_per_item,
            "users": n,
            "batch_users": cfg["batch"],
            "beams": BEAMS,
            "top_k": TOP_K,
            "model": {
                "d_model": cfg["d_model"],
                "layers": f"{cfg['layers']}+{cfg['layers']}",
                "heads": cfg["heads"],
                "d_kv": cfg["d_kv"],
                "d_ff": cfg["d_ff"],
                "ffn": "relu",
                "position_bias": "t5",
                "vocab": layout.vocab_size,
            },  # fmt: skip
            "baseline": "transformers T5ForConditionalGeneration.generate, nested-dict trie, "
            "renormalize_logits=True (and default) ",
        },
        "training": training,
        "machine": timing_machine_info(device),
        "transformers": __import__("transformers").__version__,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.quick:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
        print(
            f"\n| side | users/s |\n|---|---|\n| ours | {ups['ours']:.1f} |\n"
            f"| HF generate + trie (renormalised) | {ups['hf_renorm']:.1f} |\n"
            f"| HF generate + trie (default) | {ups['hf_default']:.1f} |\n"
            f"\nspeedup {result['speedup']}x, agreement {result['agreement']}"
        )
    return result


if __name__ == "__main__":
    main()
