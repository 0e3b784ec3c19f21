"""benchmarks/bbqrec_quality.py and genrec_quality.py --seeds end to end on the tiny fixture,
and compare.average_seeds against a hand computation."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mscg_lightning.compare import Row, average_seeds

REPO = Path(__file__).resolve().parents[1]


def _bench(name: str = "bbqrec_quality"):
    sys.path.insert(0, str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", REPO / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_average_seeds_keeps_common_users_in_any_order():
    a = Row("m", "m", np.array([3, 1, 2]), {"recall@10": np.array([1.0, 0.0, 1.0])})
    b = Row("m", "m", np.array([2, 3]), {"recall@10": np.array([0.0, 0.0])})
    avg = average_seeds([a, b])
    assert avg.users.tolist() == [2, 3]
    assert avg.values["recall@10"].tolist() == [0.5, 0.5]  # user 2: (1+0)/2, user 3: (1+0)/2


def _tiny_compare(tmp_path: Path) -> Path:
    """configs/compare/tiny.yaml with a tiny bbq tokenizer and a bbqrec generator (latent 32 =
    d_model: inherited code embeddings need it)."""
    data = yaml.safe_load((REPO / "configs" / "compare" / "tiny.yaml").read_text())
    data["bbq"] = {
        "kind": "bbq",
        "inputs": {"text": "text_embed", "image": "image_embed"},
        "model": {
            "class_path": "mscg_lightning.stages.bbq.module.BBQModule",
            "init_args": {"latent_dim": 32, "hidden_dims": [16], "levels": 2, "codebook_size": 4,
                          "seq_layers": 1, "seq_inner": 16, "kmeans_iters": 2, "club_hidden": 8},
        },
        "data": {
            "class_path": "mscg_lightning.data.datamodule.SequenceDataModule",
            "init_args": {"batch_size": 16, "max_history": 20},
        },
        "trainer": data["rq_text"]["trainer"],
    }  # fmt: skip
    tiger = data["tiger"]
    init = {k: v for k, v in tiger["model"]["init_args"].items() if k not in
            ("position_bias", "constrained_training", "beam_scoring")}  # fmt: skip
    data["bbqrec"] = {
        **tiger,
        "model": {**tiger["model"], "init_args": {**init, "sim_attention": True}},
        "modalities": {"bbq": "bbq"},
        "target": "bbq",
    }
    for name in ("no_const_train", "no_pos_emb", "masking"):
        del data[name]
    path = tmp_path / "tiny_bbq.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_bbqrec_benchmark_on_the_tiny_fixture(tmp_path):
    """Every ablation row trains (also on the fast training path), the JSON has the layout of
    the benchmark contract, per-seed values average to the reported mean."""
    bench = _bench()
    payload = bench.main_benchmark([
        "--dataset", "tiny", "--config", str(_tiny_compare(tmp_path)), "--seeds", "0", "1",
        "--max_epochs", "1", "--tokenizer_epochs", "1",
        "--overlay", str(REPO / "configs" / "model" / "genrec-fast.yaml"),
        "--run_root", str(tmp_path / "runs"), "--results_dir", str(tmp_path / "results"),
        "--data_root", str(REPO / "tests" / "fixtures"), "--note", "two seeds, one process",
    ])  # fmt: skip
    written = json.loads((tmp_path / "results" / "bbqrec_tiny.json").read_text())
    assert written["note"] == "two seeds, one process"
    expected = {"bbqrec", "bbqrec_no_mim", "bbqrec_no_rec", "bbqrec_no_shared", "bbqrec_no_sim",
                "bbqrec_inherit", "tiger", "mscgrec", "sasrec"}  # fmt: skip
    assert set(written["variants"]) == expected
    assert written["reference"] == "bbqrec"
    for name, row in written["variants"].items():
        r10 = row["test"]["recall@10"]
        assert r10["ci_low"] <= r10["mean"] <= r10["ci_high"]
        assert len(row["per_seed"]) == 2
        if name != "bbqrec":
            assert "recall@10" in row["vs_reference"]
    # each user's metric is the mean over the seeds, on the same users: the means agree
    per_seed = [s["ndcg@10"] for s in written["variants"]["tiger"]["per_seed"]]
    assert abs(np.mean(per_seed) - written["variants"]["tiger"]["test"]["ndcg@10"]["mean"]) < 1e-6
    # the ablations read their own tokenizers and switches
    run = tmp_path / "runs" / "tiny-s1"
    manifest = yaml.safe_load((run / "bbqrec_no_shared" / "manifest.json").read_text())
    assert "bbq_no_shared" in manifest["inputs"]
    assert (run / "bbq_no_mim").is_dir() and (run / "bbq_no_rec").is_dir()
    assert "bbqrec_over_tiger" in payload["relative_gain"]
    assert payload["published_bbqrec_paper"]["table4_recall@10"]["bbqrec"] == 0.1147


def test_genrec_quality_averages_two_seeds(tmp_path):
    """One chain per seed in its own run directory; the reported mean is the seeds' mean."""
    payload = _bench("genrec_quality").main_benchmark([
        "--dataset", "tiny", "--seeds", "0", "1", "--variants", "mscgrec,tiger",
        "--run_dir", str(tmp_path / "run"), "--results_dir", str(tmp_path / "results"),
        "--note", "seed 1 trained elsewhere",
    ])  # fmt: skip
    assert payload["run_dirs"] == [str(tmp_path / "run-s0"), str(tmp_path / "run-s1")]
    written = json.loads((tmp_path / "results" / "genrec_tiny.json").read_text())
    assert written["note"] == "seed 1 trained elsewhere"
    assert (tmp_path / "run-s1" / "tiger" / "test_ranks.parquet").is_file()
    tiger = payload["variants"]["tiger"]
    per_seed = [s["recall@10"] for s in tiger["per_seed"]]
    assert len(per_seed) == 2
    assert abs(np.mean(per_seed) - tiger["test"]["recall@10"]["mean"]) < 1e-6
    assert "recall@10" in tiger["vs_reference"]


def test_genrec_quality_share_upstream_varies_only_the_generators(tmp_path):
    """--share_upstream: the second seed links the first seed's quantizer (same codes) and
    trains its genrec instances with their own seed."""
    from mscg_lightning.artifacts import Manifest

    _bench("genrec_quality").main_benchmark([
        "--dataset", "tiny", "--seeds", "0", "1", "--variants", "tiger", "--share_upstream",
        "--run_dir", str(tmp_path / "run"), "--results_dir", str(tmp_path / "results"),
    ])  # fmt: skip
    first, second = tmp_path / "run-s0", tmp_path / "run-s1"
    assert (second / "rq_text").is_symlink() and not (second / "tiger").is_symlink()
    assert (second / "rq_text").resolve() == (first / "rq_text").resolve()
    hashes = [Manifest.read(d / "tiger").config_hash for d in (first, second)]
    assert hashes[0] != hashes[1]


def test_bbqrec_seed_jobs_trains_seeds_in_processes_and_reads_them_back(tmp_path):
    """--seed_jobs 2: both seed chains train in their own processes; a one-process run on the
    same run root afterwards trains nothing and reports the same numbers."""
    from mscg_lightning.artifacts import Manifest

    bench = _bench()
    args = [
        "--dataset", "tiny", "--config", str(_tiny_compare(tmp_path)), "--seeds", "0", "1",
        "--variants", "bbqrec,tiger", "--max_epochs", "1", "--tokenizer_epochs", "1",
        "--run_root", str(tmp_path / "runs"), "--data_root", str(REPO / "tests" / "fixtures"),
    ]  # fmt: skip
    parallel = bench.main_benchmark(
        [*args, "--seed_jobs", "2", "--results_dir", str(tmp_path / "a")]
    )
    assert set(parallel["wall_per_seed"]) == {"parallel"}
    for seed in (0, 1):
        assert (tmp_path / "runs" / "logs" / f"s{seed}.log").is_file()
    runs = [tmp_path / "runs" / f"tiny-s{seed}" for seed in (0, 1)]
    made = [Manifest.read(run / "bbqrec").created_at for run in runs]
    sequential = bench.main_benchmark([*args, "--results_dir", str(tmp_path / "b")])
    assert [Manifest.read(run / "bbqrec").created_at for run in runs] == made
    assert sequential["artifacts_made_at"] == parallel["artifacts_made_at"]
    assert set(parallel["artifacts_made_at"]["s1"]) >= {"prepare", "bbq", "bbqrec", "tiger"}
    for name in ("bbqrec", "tiger"):
        assert sequential["variants"][name]["per_seed"] == parallel["variants"][name]["per_seed"]
    # each process ran its own seed
    assert [yaml.safe_load((run / "config.yaml").read_text())["seed"] for run in runs] == [0, 1]


def test_genrec_quality_jobs_trains_instances_in_processes(tmp_path):
    """--jobs 2: the upstream stages run once, then each genrec instance in its own process."""
    payload = _bench("genrec_quality").main_benchmark([
        "--dataset", "tiny", "--variants", "mscgrec,tiger", "--jobs", "2",
        "--run_dir", str(tmp_path / "run"), "--results_dir", str(tmp_path / "results"),
    ])  # fmt: skip
    for name in ("mscgrec", "tiger"):
        assert (tmp_path / "run" / name / "test_ranks.parquet").is_file()
        assert (tmp_path / "run" / "logs" / f"{name}.log").is_file()
    assert set(payload["variants"]) == {"mscgrec", "tiger"}


def test_genrec_quality_jobs_pool_spans_the_seeds(tmp_path):
    """--seeds 0 1 --share_upstream --jobs 2: both seeds' generators train in one process pool,
    each with its own seed, over the first seed's upstream."""
    from mscg_lightning.artifacts import Manifest

    payload = _bench("genrec_quality").main_benchmark([
        "--dataset", "tiny", "--seeds", "0", "1", "--variants", "tiger", "--share_upstream",
        "--jobs", "2", "--run_dir", str(tmp_path / "run"),
        "--results_dir", str(tmp_path / "results"),
    ])  # fmt: skip
    first, second = tmp_path / "run-s0", tmp_path / "run-s1"
    for run in (first, second):
        assert (run / "tiger" / "test_ranks.parquet").is_file()
        assert (run / "logs" / "tiger.log").is_file()
    assert (second / "rq_text").resolve() == (first / "rq_text").resolve()
    assert Manifest.read(first / "tiger").config_hash != Manifest.read(second / "tiger").config_hash
    assert len(payload["variants"]["tiger"]["per_seed"]) == 2


def test_genrec_quality_archive_restores_rows_into_a_rebuilt_run_dir(tmp_path):
    """--archive: a row trained in one run directory is restored, not retrained, into a rebuilt
    one (a new session) and reports the same per-user results; a row whose upstream tables
    changed is refused in one sentence, leaving the run directory without it."""
    from mscg_lightning.artifacts import Manifest

    bench = _bench("genrec_quality")
    archive = tmp_path / "archive"
    args = [
        "--dataset", "tiny", "--seeds", "0", "--variants", "tiger", "--share_upstream",
        "--run_dir", str(tmp_path / "run"), "--archive", str(archive),
    ]  # fmt: skip
    first = bench.main_benchmark([*args, "--results_dir", str(tmp_path / "a")])
    run = tmp_path / "run-s0"
    saved = archive / "run-s0" / "tiger"
    assert sorted(p.name for p in saved.iterdir()) == [
        "manifest.json", "metrics.json", "test_ranks.parquet", "upstream.json"
    ]  # fmt: skip
    assert set(json.loads((saved / "upstream.json").read_text())) == {"prepare", "rq_text"}
    made = Manifest.read(run / "tiger").created_at
    shutil.rmtree(run)  # the next session: the run directory is gone, the archive is kept
    again = bench.main_benchmark([*args, "--results_dir", str(tmp_path / "b")])
    assert again["archive"]["restored"] == {str(run): ["tiger"]}
    assert (run / "tiger" / "restored_from_archive.json").is_file()
    assert not (run / "tiger" / "model.ckpt").exists()  # not retrained
    assert Manifest.read(run / "tiger").created_at == made
    assert again["variants"]["tiger"]["per_seed"] == first["variants"]["tiger"]["per_seed"]

    shutil.rmtree(run / "tiger")
    upstream = json.loads((saved / "upstream.json").read_text())
    (saved / "upstream.json").write_text(json.dumps({**upstream, "rq_text": "0" * 16}))
    with pytest.raises(SystemExit) as err:
        bench.main_benchmark([*args, "--results_dir", str(tmp_path / "c")])
    message = str(err.value)
    assert "row 'tiger'" in message and "'rq_text'" in message and str(saved) in message
    assert not (run / "tiger").exists() and not (tmp_path / "c").exists()
