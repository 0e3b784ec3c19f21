"""Amazon Reviews 2023 through Hugging Face `datasets` (`prepare.hub`), for the amazon2023 adapter.

The paper's data is published as `McAuley-Lab/Amazon-Reviews-2023` on the hub, with one JSON
Lines file per category: `raw/review_categories/<dataset>.jsonl` and
`raw/meta_categories/meta_<dataset>.jsonl`. `prepare.hub` is either

- a hub dataset id (`McAuley-Lab/Amazon-Reviews-2023`): the two files are read with the `json`
  builder from `hf://datasets/<id>/...` (HF_HUB_OFFLINE=1 then needs them in the hub cache);
- a local folder: a mirror of that repository (the same relative paths), or two datasets saved
  by `Dataset.save_to_disk` as `<folder>/<dataset>` and `<folder>/meta_<dataset>`.

`prepare.interactions_file` / `prepare.items_file` override the two relative paths. With
`prepare.hub_streaming` (default) the files are read batch by batch and only the columns the
adapter uses are kept, so the review texts never sit in memory; otherwise `datasets` builds its
Arrow cache first. The result is the same pair of Arrow tables the local-file path reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from mscg_lightning.errors import MscgError

REVIEWS = "raw/review_categories/{dataset}.jsonl"
META = "raw/meta_categories/meta_{dataset}.jsonl"


def _import_datasets():
    try:
        import datasets
    except ImportError as err:
        raise MscgError(
            "prepare.hub needs the `datasets` package: pip install 'mscg_lightning[datasets]'."
        ) from err
    return datasets


def _conform(table: pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """`table` with exactly `schema`'s columns (absent ones null), cast to its types."""
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        try:
            columns.append(col.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise MscgError(
                f"{source} column '{field.name}' holds {col.type}, not {field.type} ({err})."
            ) from err
    return pa.table(columns, schema=schema)


def _from_disk(path: Path, schema: pa.Schema) -> pa.Table:
    datasets = _import_datasets()
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) != 1:
            raise MscgError(f"{path} holds the splits {list(ds)}; keep one split.")
        ds = next(iter(ds.values()))
    table = ds.data.table
    return _conform(
        table.select([c for c in schema.names if c in table.column_names]), schema, str(path)
    )


def _json_files(url: str, schema: pa.Schema, streaming: bool) -> pa.Table:
    datasets = _import_datasets()
    try:
        ds = datasets.load_dataset("json", data_files=url, split="train", streaming=streaming)
        if not streaming:
            table = ds.data.table
            keep = [c for c in schema.names if c in table.column_names]
            return _conform(table.select(keep), schema, url)
        parts = []
        for batch in ds.with_format("arrow").iter(batch_size=100_000):
            keep = [c for c in schema.names if c in batch.column_names]
            parts.append(_conform(batch.select(keep), schema, url))
    except MscgError:
        raise
    except (FileNotFoundError, OSError, ValueError) as err:
        hint = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        raise MscgError(f"prepare.hub: cannot read {url}{hint}: {err}") from err
    if not parts:
        raise MscgError(f"{url} holds no rows.")
    return pa.concat_tables(parts)


def amazon2023_tables(
    hub: str,
    dataset: str,
    review_schema: pa.Schema,
    meta_schema: pa.Schema,
    *,
    interactions_file: str | None = None,
    items_file: str | None = None,
    streaming: bool = True,
) -> tuple[pa.Table, pa.Table, list[str]]:
    """(reviews, meta, [reviews source, meta source]) of category `dataset` from `hub`.

    The tables have exactly the given schemas (columns the source lacks are null).
    """
    local = Path(hub).expanduser()
    if local.is_dir():
        saved = [local / dataset, local / f"meta_{dataset}"]
        if all((p / "dataset_info.json").is_file() or (p / "state.json").is_file() for p in saved):
            return (
                _from_disk(saved[0], review_schema),
                _from_disk(saved[1], meta_schema),
                [str(p) for p in saved],
            )
        base = str(local.resolve())
    elif hub.startswith(("/", "./", "../", "~")):
        raise MscgError(f"prepare.hub folder {local} does not exist.")
    else:
        base = f"hf://datasets/{hub}"
    urls = [
        f"{base}/{interactions_file or REVIEWS.format(dataset=dataset)}",
        f"{base}/{items_file or META.format(dataset=dataset)}",
    ]
    if local.is_dir():
        for url in urls:
            if not Path(url).is_file():
                raise MscgError(
                    f"{url} does not exist: prepare.hub {local} must mirror the hub layout "
                    f"({REVIEWS} and {META}) or hold datasets saved as {dataset} and "
                    f"meta_{dataset}."
                )
    reviews = _json_files(urls[0], review_schema, streaming)
    meta = _json_files(urls[1], meta_schema, streaming)
    return reviews, meta, urls
