"""The `interactions` layout (your own tables, see data/interactions.py) in miniature, for tests.

Same ground truth as every other layout (fixtures.py), written as csv / tsv / parquet / jsonl /
csv.gz tables.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from mscg_lightning.data.fixtures import fixture_truth, flat_interactions, item_title, write_images


def make_interactions_fixture(
    root: Path, fmt: str = "csv", items: bool = True, seed: int = 0, images: bool = True
) -> Path:
    """The `interactions` layout in miniature under `root/interactions-<fmt>/`; returns it.

    `interactions.<fmt>` (columns user_id, item_id, timestamp: ISO 8601 date-times in csv/tsv,
    epoch seconds otherwise; rows shuffled), and with `items` an `items.<fmt>` (item_id, title,
    image: a path relative to the folder, every 5th item without one; image files in `img/`).
    `fmt`: csv, tsv, parquet, jsonl or csv.gz. Ground truth: `fixture_truth(seed)`, users `u<k>`,
    items `i<k>`.
    """
    truth = fixture_truth(seed)
    folder = Path(root) / f"interactions-{fmt.replace('.', '-')}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = flat_interactions(truth)
    order = np.random.default_rng(seed + 6).permutation(len(rows))
    iso = fmt.split(".")[0] in ("csv", "tsv")
    stamp = [
        dt.datetime.fromtimestamp(rows[k][2], dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        if iso
        else rows[k][2]
        for k in order
    ]
    inter = pa.table(
        {
            "user_id": [f"u{rows[k][0]}" for k in order],
            "item_id": [f"i{rows[k][1]}" for k in order],
            "timestamp": stamp,
        }
    )
    tables = {"interactions": inter}
    if items:
        names = [f"i{i}" for i in range(truth.n_items)]
        if images:
            write_images(folder / "img", names, truth, seed)
        found = {p.stem: f"img/{p.name}" for p in (folder / "img").glob("*")} if images else {}
        tables["items"] = pa.table(
            {
                "item_id": names,
                "title": [item_title(i) for i in range(truth.n_items)],
                "image": [None if i % 5 == 4 else found.get(n) for i, n in enumerate(names)],
            }
        )
    for name, table in tables.items():
        path = folder / f"{name}.{fmt}"
        if fmt == "parquet":
            pq.write_table(table, path)
        elif fmt == "jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
        else:
            sep = "\t" if fmt == "tsv" else ","
            # pyarrow quotes header names whatever the style: write the header line by hand
            style = "none" if fmt == "tsv" else "needed"
            opts = pcsv.WriteOptions(include_header=False, delimiter=sep, quoting_style=style)
            head = (sep.join(table.column_names) + "\n").encode()
            gz = fmt.endswith(".gz")
            with pa.CompressedOutputStream(str(path), "gzip") if gz else open(path, "wb") as f:
                f.write(head)
                pcsv.write_csv(table, f, opts)
    return folder
