"""The `mscg` command: config errors, the chain on the tiny fixture, up-to-date skipping."""

import json
import warnings
from pathlib import Path

import pytest

from mscg_lightning.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")


def _tiny(tmp_path, *extra):
    return [
        "--config",
        TINY,
        "--run_dir",
        str(tmp_path / "run"),
        "--data_root",
        str(REPO / "tests" / "fixtures"),
        *extra,
    ]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prepare.k_kore", "3"], "unrecognized arguments"),
        (["--prepare.k_core", "three"], "prepare.k_core"),
        (["--sasrec.trainer.max_epochs", "x"], "max_epochs"),
    ],
)
def test_bad_config_exits_2_with_the_key_named(tmp_path, capsys, extra, message):
    assert main(["prepare", *_tiny(tmp_path, *extra)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "prepared").exists()


def test_unknown_key_in_a_config_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(TINY).read_text().replace("k_core", "k_kore") + "\nprepare: {k_kore: 3}\n")
    assert main(["fit", "--config", str(bad), "--run_dir", str(tmp_path / "run")]) == 2
    assert "k_kore" in capsys.readouterr().err


def test_missing_config_file_and_unknown_command(tmp_path, capsys):
    assert main(["fit", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert main(["fitt"]) == 2
    assert "unknown command 'fitt'" in capsys.readouterr().err


def test_bad_data_exits_2_and_leaves_no_artifact(tmp_path, capsys):
    code = main(["prepare", *_tiny(tmp_path, "--prepare.path", str(tmp_path / "absent"))])
    assert code == 2
    err = capsys.readouterr().err
    assert "absent" in err and err.count("\n") <= 2
    assert not (tmp_path / "run" / "prepared").exists()


def test_every_config_parses(capsys):
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        if path.parent.name in ("trainer", "model"):
            continue  # overlays: checked with a dataset config below
        assert main(["fit", "--config", str(path), "--print_config"]) == 0, path
        capsys.readouterr()
    for overlay in sorted((REPO / "configs" / "trainer").glob("*.yaml")):
        assert main(["fit", "--config", TINY, "--config", str(overlay), "--print_config"]) == 0
        assert "precision" in capsys.readouterr().out
    # a model overlay changes the sizes it names and keeps the dataset config's other settings
    small = str(REPO / "configs" / "model" / "genrec-small.yaml")
    beauty = str(REPO / "configs" / "beauty.yaml")
    assert main(["fit", "--config", beauty, "--config", small, "--print_config"]) == 0
    genrec = capsys.readouterr().out.split("\ngenrec:")[1]
    assert "d_model: 64" in genrec and "encoder_layers: 2" in genrec and "batch_size: 64" in genrec
    assert "GenRecModule" in genrec and "num_beams: 20" in genrec and "max_epochs: 30" in genrec


def test_tiny_chain_runs_then_is_up_to_date(tmp_path, capsys):
    assert main(["fit", *_tiny(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "up to date" not in out
    run = tmp_path / "run"
    metrics = json.loads((run / "sasrec" / "metrics.json").read_text())
    assert metrics["test"]["num_users"]["mean"] == 60
    assert main(["fit", *_tiny(tmp_path)]) == 0
    out = capsys.readouterr().out
    stages = [line for line in out.splitlines() if line.startswith("[mscg]") and ": " in line]
    stages = [line for line in stages if "every metric" not in line]
    assert stages and all("up to date" in line for line in stages), out
    assert any(line.startswith("sasrec ") and " 60 " in line for line in out.splitlines()), out
    # modality attribution over the three modalities: 8 subsets, efficient Shapley values
    assert main(["attribute", *_tiny(tmp_path, "--out", str(tmp_path / "attr.json"))]) == 0
    assert not (run / "attribution.json").exists()  # the run directory is only read
    result = json.loads((tmp_path / "attr.json").read_text())
    assert len(result["subsets"]) == 8 and set(result["shapley"]) == {"text", "image", "collab"}
    full, empty = result["subsets"]["collab+image+text"], result["subsets"]["(all masked)"]
    gain = full["ndcg@10"] - empty["ndcg@10"]
    assert sum(result["shapley"].values()) == pytest.approx(gain, abs=1e-9)
    # nothing masked is the genrec stage's own test run (tiny lists the modalities out of
    # alphabetical order, so a reload that stacks them by name would differ)
    genrec = json.loads((run / "genrec" / "metrics.json").read_text())["test"]
    assert full["ndcg@10"] == pytest.approx(genrec["ndcg@10"]["mean"], abs=1e-6)
    capsys.readouterr()
    _predict_reproduces_the_test_predictions(tmp_path, run, capsys)
    # a changed config redoes that stage and what depends on it, nothing else
    assert main(["fit", *_tiny(tmp_path, "--rq_text.model.init_args.kmeans_iters", "3")]) == 0
    out = capsys.readouterr().out
    assert "[mscg] rq_text: running" in out and "[mscg] sasrec: up to date" in out


def test_stage_output_has_no_lightning_advert_nor_no_optimizer_warning(tmp_path, capfd):
    # kind 'rq' fits by k-means without an optimizer: Lightning's warning about it is noise
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", *_tiny(tmp_path, "--stages", "prepare,text_embed,rq_text")]) == 0
    out, err = capfd.readouterr()
    assert "[mscg] rq_text: done" in out
    assert "litlogger" not in out + err
    assert not [w for w in caught if "configure_optimizers" in str(w.message)]


def _predict_reproduces_the_test_predictions(tmp_path, run, capsys):
    """`mscg predict` on the test users' histories returns the stage's own test predictions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mscg_lightning.artifacts import read_table

    items = read_table(run / "prepared" / "items", columns=["item_idx", "item_id"])
    raw = dict(zip(items.column("item_idx").to_pylist(), items.column("item_id").to_pylist()))
    test = read_table(run / "prepared" / "test", columns=["user_idx", "history"])
    histories = [[raw[i] for i in row] for row in test.column("history").to_pylist()]
    users = test.column("user_idx").to_pylist()
    src = tmp_path / "histories.parquet"
    pq.write_table(pa.table({"user_idx": users, "history": histories}), src)
    assert main(["predict", *_tiny(tmp_path, "--user_histories", str(src))]) == 0
    assert "60 users" in capsys.readouterr().out
    got = pq.read_table(tmp_path / "histories.predictions.parquet").to_pylist()
    want = {
        r["user_idx"]: r for r in pq.read_table(run / "genrec" / "predictions.parquet").to_pylist()
    }
    for row in got:
        expected = want[row["user_idx"]]
        assert row["items"] == [raw[i] for i in expected["items"] if i >= 0]
        assert row["scores"] == pytest.approx(expected["scores"][: len(row["items"])], abs=1e-4)


def test_the_order_of_genrec_modalities_is_part_of_the_config_hash():
    """Codes stack in the configured order inside every history item: reordering them is a new
    model, although the hash sorts dictionary keys."""
    from jsonargparse import Namespace

    from mscg_lightning.pipeline import config_hash_of

    def hash_of(modalities: dict) -> str:
        section = Namespace(kind="genrec", modalities=modalities)
        return config_hash_of(Namespace(seed=0, genrec=section), "genrec")

    text_first = hash_of({"text": "rq_text", "collab": "rq_collab"})
    assert text_first == hash_of({"text": "rq_text", "collab": "rq_collab"})
    assert text_first != hash_of({"collab": "rq_collab", "text": "rq_text"})
