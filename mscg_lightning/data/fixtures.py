"""Seeded generator of every raw layout in miniature, for tests and demos.

All layouts are written from the same ground truth (`fixture_truth`): user u's chronological
item sequence, with strictly increasing timestamps and occasional repeated items. Each layout
spells the ids its own way (RecBole "1".., P5 1-based, MQL4GRec 0-based with ASINs, PixelRec
"i0"/"u0"), so a prepared fixture can be checked against the truth whatever the layout.
Layouts with images get small real PNG/JPEG files; a few items share byte-identical images (to
exercise dedup) and one item has an empty (0-byte) image file. `make_fixture(...,
placeholders=n)` gives n items with different titles one shared "no image available" picture.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mscg_lightning.data.prepare_config import PrepareConfig
from mscg_lightning.data.recbole_wheel import MEMBER_DIR, WHEEL_NAME

LAYOUTS = (
    "recbole",
    "ml100k_wheel",
    "amazon2014",
    "amazon2018",
    "unisrec",
    "amazon2023",
    "pixelrec",
)
# The dataset stem each fixture layout uses.
FIXTURE_DATASETS = {
    "recbole": "tiny",
    "ml100k_wheel": "ml-100k",
    "amazon2014": "Beauty",
    "amazon2018": "Instruments",
    "unisrec": "Scientific",
    "amazon2023": "All_Beauty",
    "pixelrec": "Pixel200K",
}
WORDS = ("red", "blue", "soft", "loud", "tiny", "grand", "quick", "calm", "bold", "mild")


@dataclass
class FixtureTruth:
    """Ground truth of a fixture: `sequences[u]` = chronological 0-based item indices of user u,
    `times[u]` their strictly increasing timestamps (seconds), `dup_of[i]` = the smaller item
    whose image bytes item i copies (or i itself), `no_image` = items with an empty image file,
    `placeholder` = items whose image is the shared placeholder picture (`placeholder_bytes()`).
    """

    sequences: list[list[int]]
    times: list[list[int]]
    n_items: int
    dup_of: list[int]
    no_image: list[int]
    placeholder: list[int] = field(default_factory=list)


def fixture_truth(
    seed: int = 0, n_users: int = 60, n_items: int = 40, placeholders: int = 0
) -> FixtureTruth:
    """The interactions every layout of `make_fixture(seed, n_users, n_items, placeholders)`
    holds.

    Each user has 6-12 interactions; popularity is mildly skewed (p ~ 1 / (rank + 8)) so a
    5-core keeps most of the data; about 5% of steps repeat the previous item. `placeholders`
    items (every 3rd from item 1, none of the duplicates or the empty image) show one shared
    placeholder picture.
    """
    rng = np.random.default_rng(seed)
    p = 1.0 / (np.arange(n_items) + 8.0)
    p /= p.sum()
    sequences, times = [], []
    for _ in range(n_users):
        length = int(rng.integers(6, 13))
        seq = rng.choice(n_items, size=length, p=p).tolist()
        for k in range(1, length):
            if rng.random() < 0.05:
                seq[k] = seq[k - 1]
        start = 1_600_000_000 + int(rng.integers(0, 10_000_000))
        times.append((start + np.cumsum(rng.integers(1, 86_400, size=length))).tolist())
        sequences.append(seq)
    dup_of = list(range(n_items))
    for i in range(5, n_items, 13):  # items 5, 18, 31, ... copy the image of item i - 1
        dup_of[i] = i - 1
    no_image = [n_items - 1] if n_items > 7 else []
    # neither a duplicate nor the source of one, not the empty image
    candidates = [i for i in range(1, n_items, 3) if dup_of.count(i) == 1 and dup_of[i] == i]
    candidates = [i for i in candidates if i not in no_image]
    if placeholders > len(candidates):
        raise ValueError(f"at most {len(candidates)} placeholder items for {n_items} items")
    return FixtureTruth(sequences, times, n_items, dup_of, no_image, candidates[:placeholders])


def item_title(i: int) -> str:
    return f"Item {i} {WORDS[i % len(WORDS)]} {WORDS[(i * 7) % len(WORDS)]}"


def _asin(i: int) -> str:
    return f"B{i:09d}"


def _image_bytes(rng: np.random.Generator, fmt: str) -> bytes:
    pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, format=fmt)
    return buf.getvalue()


def placeholder_bytes() -> bytes:
    """The fixtures' grey "no image available" picture (PNG); its SHA-256 can be listed in
    prepare.placeholder_hashes."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 200, 200)).save(buf, format="PNG")
    return buf.getvalue()


def write_images(folder: Path, names: list[str], truth: FixtureTruth, seed: int) -> None:
    """`<name>.jpg` per item (every third one `.png`), duplicates copied byte for byte,
    placeholder items given `placeholder_bytes()`."""
    rng = np.random.default_rng(seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    data: list[bytes] = []
    for i, name in enumerate(names):
        ext = ".png" if i % 3 == 2 else ".jpg"
        payload = (
            data[truth.dup_of[i]]
            if truth.dup_of[i] != i
            else _image_bytes(rng, "PNG" if ext == ".png" else "JPEG")
        )
        data.append(payload)
        if i in truth.no_image:
            payload = b""  # an empty file: an item whose image is missing
        if i in truth.placeholder:
            payload, ext = placeholder_bytes(), ".png"
        # A duplicate keeps its source's format so the bytes stay identical.
        if truth.dup_of[i] != i:
            ext = ".png" if truth.dup_of[i] % 3 == 2 else ".jpg"
        (folder / f"{name}{ext}").write_bytes(payload)


def flat_interactions(truth: FixtureTruth) -> list[tuple[int, int, int]]:
    return [
        (u, it, t)
        for u, (s, ts) in enumerate(zip(truth.sequences, truth.times))
        for it, t in zip(s, ts)
    ]


def _write_recbole(folder: Path, stem: str, truth: FixtureTruth, seed: int) -> None:
    rows = flat_interactions(truth)
    order = np.random.default_rng(seed + 2).permutation(len(rows))  # files are not sorted
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{stem}.inter", "w", encoding="utf-8") as f:
        f.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for k in order:
            u, it, t = rows[k]
            f.write(f"{u + 1}\t{it + 1}\t{1 + (u + it) % 5}\t{t}\n")
    with open(folder / f"{stem}.item", "w", encoding="utf-8") as f:
        f.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for i in range(truth.n_items):
            genres = f"{WORDS[i % 10].title()} {WORDS[(i + 3) % 10].title()}"
            f.write(f'{i + 1}\t{item_title(i)} "quoted"\t{1990 + i % 10}\t{genres}\n')


def _write_wheel(folder: Path, truth: FixtureTruth, seed: int) -> None:
    """A stand-in for the recbole wheel holding the fixture as ml-100k (for offline tests)."""
    tmp = folder / "_src"
    _write_recbole(tmp, "ml-100k", truth, seed)
    with zipfile.ZipFile(folder / WHEEL_NAME, "w") as zf:
        for name in ("ml-100k.inter", "ml-100k.item"):
            zf.writestr(f"{MEMBER_DIR}/{name}", (tmp / name).read_bytes())
        zf.writestr("recbole/__init__.py", "")
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()


def _write_amazon2014(folder: Path, stem: str, truth: FixtureTruth) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{stem}.txt", "w", encoding="utf-8") as f:
        for u, seq in enumerate(truth.sequences):
            f.write(" ".join(str(x) for x in [u + 1, *[i + 1 for i in seq]]) + "\n")
    with open(folder / "items_joined.tsv", "w", encoding="utf-8") as f:
        f.write("item_id\tasin\ttitle\tattributes_freq_ge5\n")
        for i in range(truth.n_items):
            title = "" if i % 11 == 3 else item_title(i)  # a few empty titles, attributes remain
            f.write(f"{i + 1}\t{_asin(i)}\t{title}\tBrand{i % 4}|Beauty|{WORDS[i % 10]}\n")
    codes = {
        str(i): [f"<a_{i % 7}>", f"<b_{i % 5}>", f"<c_{i % 3}>", f"<d_{i}>"]
        for i in range(truth.n_items)
    }
    (folder / f"LETTER_{stem}.index.json").write_text(json.dumps(codes))


def _write_amazon2018(folder: Path, stem: str, truth: FixtureTruth) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    inter = {str(u): seq for u, seq in enumerate(truth.sequences)}
    (folder / f"{stem}.inter.json").write_text(json.dumps(inter, indent=1))
    # item2id lines deliberately not sorted by id: the adapter orders by id.
    lines = [f"{_asin(i)}\t{i}\n" for i in range(truth.n_items)]
    (folder / f"{stem}.item2id").write_text("".join(lines[1::2] + lines[0::2]))
    for name, mult in (("lemb", 3), ("vitemb", 5)):
        codes = {
            str(i): [f"<a_{(i * mult) % 9}>", f"<b_{i % 4}>", f"<c_{i % 6}>", f"<d_{i}>"]
            for i in range(truth.n_items)
        }
        (folder / f"{stem}.index_{name}.json").write_text(json.dumps(codes, indent=2))
    with open(folder / "items_text.jsonl", "w", encoding="utf-8") as f:
        for i in range(truth.n_items):
            row = {
                "asin": _asin(i),
                "item_id": i,
                "title": item_title(i),
                "brand": "" if i % 6 == 1 else f"Brand{i % 4}",
                "categories": f"Musical Instruments,{WORDS[i % 10].title()}",
            }
            f.write(json.dumps(row) + "\n")


def _write_unisrec(folder: Path, stem: str, truth: FixtureTruth, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    files = {name: [head] for name in ("train", "valid", "test")}
    for u, seq in enumerate(truth.sequences):
        for k in range(1, len(seq) - 2):  # UniSRec's train file: every prefix as a sample
            files["train"].append(f"{u}\t{' '.join(map(str, seq[:k]))}\t{seq[k]}\n")
        files["valid"].append(f"{u}\t{' '.join(map(str, seq[:-2]))}\t{seq[-2]}\n")
        files["test"].append(f"{u}\t{' '.join(map(str, seq[:-1]))}\t{seq[-1]}\n")
    for name, lines in files.items():
        (folder / f"{stem}.{name}.inter").write_text("".join(lines))
    (folder / f"{stem}.item2index").write_text(
        "".join(f"{_asin(i)}\t{i}\n" for i in range(truth.n_items))
    )
    (folder / f"{stem}.user2index").write_text(
        "".join(f"A{u:08d}\t{u}\n" for u in range(len(truth.sequences)))
    )
    with open(folder / f"{stem}.text", "w", encoding="utf-8") as f:
        f.write("item_id:token\ttext:token_seq\n")
        for i in range(truth.n_items):
            f.write(f"{_asin(i)}\t{item_title(i)}. Industrial & Scientific. Brand{i % 4}. \n")
    rng = np.random.default_rng(seed + 3)
    for suffix in ("feat1CLS", "feat3CLS"):
        rng.standard_normal((truth.n_items, 8)).astype(np.float32).tofile(
            folder / f"{stem}.{suffix}"
        )


def _write_amazon2023(folder: Path, stem: str, truth: FixtureTruth, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = flat_interactions(truth)
    order = np.random.default_rng(seed + 4).permutation(len(rows))
    with gzip.open(folder / f"{stem}.jsonl.gz", "wt", encoding="utf-8") as f:
        for k in order:
            u, it, t = rows[k]
            f.write(
                json.dumps(
                    {
                        "rating": float(1 + (u + it) % 5),
                        "title": "ok",
                        "text": "fine",
                        "images": [],
                        "asin": _asin(it),
                        "parent_asin": _asin(it),
                        "user_id": f"AG{u:06d}",
                        "timestamp": t * 1000,
                        "helpful_vote": 0,
                        "verified_purchase": True,
                    }
                )
                + "\n"
            )
    with open(folder / f"meta_{stem}.jsonl", "w", encoding="utf-8") as f:
        for i in range(truth.n_items):
            f.write(
                json.dumps(
                    {
                        "main_category": "All Beauty",
                        "title": item_title(i),
                        "average_rating": 4.5,
                        "rating_number": 10,
                        "features": [] if i % 4 == 0 else [f"feature {i}", "shiny"],
                        "description": [f"A {WORDS[i % 10]} product."],
                        "price": None,
                        "images": [],
                        "videos": [],
                        "store": f"Store{i % 3}",
                        "categories": ["Beauty", WORDS[i % 10].title()],
                        "details": {"k": "v"},
                        "parent_asin": _asin(i),
                    }
                )
                + "\n"
            )
    write_images(folder / "images", [_asin(i) for i in range(truth.n_items)], truth, seed)


def _write_pixelrec(folder: Path, stem: str, truth: FixtureTruth, seed: int) -> None:
    rows = flat_interactions(truth)
    order = np.random.default_rng(seed + 5).permutation(len(rows))
    (folder / "interactions").mkdir(parents=True, exist_ok=True)
    (folder / "item_info").mkdir(exist_ok=True)
    with open(folder / "interactions" / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "user_id", "timestamp"])
        for k in order:
            u, it, t = rows[k]
            w.writerow([f"i{it}", f"u{u}", t])
    with open(folder / "item_info" / f"{stem}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["item_id", "view_number", "comment_number", "title", "tag", "description"])
        for i in range(truth.n_items):
            desc = "" if i % 3 == 0 else f'A "cover", with commas, {WORDS[i % 10]}'
            w.writerow([f"i{i}", 100 + i, i, item_title(i), WORDS[(i + 1) % 10], desc])
    write_images(folder / "cover", [f"i{i}" for i in range(truth.n_items)], truth, seed)


def make_fixture(
    layout: str,
    root: Path,
    seed: int = 0,
    n_users: int = 60,
    n_items: int = 40,
    placeholders: int = 0,
) -> Path:
    """Write `layout` in miniature under `root/<layout>/` and return that dataset folder.

    `placeholders`: items given one shared placeholder picture (image layouts only).

    For `ml100k_wheel` the folder is a cache directory holding a stand-in recbole wheel (use it
    as `prepare.path` or `$MSCG_CACHE`). `FIXTURE_DATASETS[layout]` is the file stem.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")
    truth = fixture_truth(seed, n_users, n_items, placeholders)
    folder = Path(root) / layout
    folder.mkdir(parents=True, exist_ok=True)
    stem = FIXTURE_DATASETS[layout]
    if layout == "recbole":
        _write_recbole(folder, stem, truth, seed)
    elif layout == "ml100k_wheel":
        _write_wheel(folder, truth, seed)
    elif layout == "amazon2014":
        _write_amazon2014(folder, stem, truth)
    elif layout == "amazon2018":
        _write_amazon2018(folder, stem, truth)
    elif layout == "unisrec":
        _write_unisrec(folder, stem, truth, seed)
    elif layout == "amazon2023":
        _write_amazon2023(folder, stem, truth, seed)
    else:
        _write_pixelrec(folder, stem, truth, seed)
    return folder


def fixture_config(layout: str, path: Path, **overrides: object) -> PrepareConfig:
    """The PrepareConfig that reads `make_fixture(layout, ...)`'s folder `path`."""
    cfg = PrepareConfig(adapter=layout, path=str(path), dataset=FIXTURE_DATASETS[layout])  # type: ignore[arg-type]
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg
