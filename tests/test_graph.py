"""The chain as a graph: instance discovery, whole-chain validation before anything runs, parts."""

from pathlib import Path

import pytest
import yaml
from jsonargparse import Namespace

from mscg_lightning.artifacts import Manifest
from mscg_lightning.cli import main
from mscg_lightning.errors import MscgError
from mscg_lightning.graph import build_graph, discover, split_source
from mscg_lightning.pipeline import resolve_source
from mscg_lightning.registry import KINDS, StageKind, get, register

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
COMPARE = REPO / "configs" / "compare" / "tiny.yaml"


def _variant(tmp_path: Path, edit, base: Path = COMPARE) -> Path:
    data = yaml.safe_load(base.read_text())
    edit(data)
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _fails(tmp_path, capsys, edit, phrase, extra=(), base=COMPARE):
    config = _variant(tmp_path, edit, base)
    run = tmp_path / "run"
    code = main(["fit", "--config", str(config), "--run_dir", str(run), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert phrase in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one sentence
    assert not run.exists()  # nothing ran, nothing was written


def _set(path: str, value):
    def edit(data):
        *keys, last = path.split(".")
        node = data
        for key in keys:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


@pytest.mark.parametrize(
    "edit, phrase",
    [
        # an input that no instance produces
        (_set("mscgrec.modalities.text", "rq_nope"), "no stage instance of this config"),
        # an input of the wrong payload: embeddings where codes are needed
        (_set("mscgrec.modalities.text", "text_embed"), "needs codes"),
        (_set("tiger.model.init_args.top_k", 20), "top_k (20) exceeds num_beams (10)"),
    ],
)
def test_bad_chains_exit_2_before_anything_runs(tmp_path, capsys, edit, phrase):
    _fails(tmp_path, capsys, edit, phrase)


_PARSER = {}


def _check(edit) -> None:
    """Parse an edited compare/tiny config and build its graph (the checks main runs first)."""
    from mscg_lightning.config import chain_parser

    data = yaml.safe_load(COMPARE.read_text())
    edit(data)
    kinds = discover(data)
    key = tuple(sorted(kinds.items()))
    if key not in _PARSER:
        _PARSER[key] = chain_parser(instances=kinds)
    config = _PARSER[key].parse_object(data)
    build_graph(config, kinds)


@pytest.mark.parametrize(
    "edit, phrase",
    [
        (_set("rq_text.inputs.embeddings", "text_embd"), "'text_embd', which no stage instance"),
        (_set("rq_text.inputs.embeddings", "rq_image"), "needs embeddings"),
        # a part the producer does not have
        (_set("mscgrec.modalities.text", "prepare:text"), "has no part 'text'"),
        # an unknown slot, an unknown kind
        (_set("rq_text.inputs.embedding", "text_embed"), "does not have (its inputs"),
        (_set("tiger.kind", "tigre"), "'tigre' is not a stage kind"),
        # values (issue 21.7)
        (_set("mscgrec.target", "image_codes"), "target 'image_codes' is not one of"),
        (_set("rq_text.model.init_args.levels", 0), "rq_text.model.init_args.levels is 0"),
        (_set("sasrec.data.init_args.batch_size", -4), "batch_size is -4"),
        (_set("seed", -1), "seed -1 is negative"),
        (_set("reference", "mscgrek"), "reference 'mscgrek' is not a model instance"),
        (_set("mscgrec.modalities", {}), "mscgrec.modalities is empty"),
        (
            _set("masking.model.init_args.eval_masked_modalities", ["imag"]),
            "eval_masked_modalities names 'imag'",
        ),
    ],
)
def test_bad_chains_are_one_sentence(edit, phrase):
    with pytest.raises(MscgError) as err:
        _check(edit)
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_a_cycle_is_refused(tmp_path, capsys):
    def edit(data):
        data["rq_text"]["inputs"] = {"embeddings": "text_embed", "prepare": "rq_collab"}
        data["rq_collab"]["inputs"] = {"embeddings": "sasrec", "prepare": "rq_text"}

    # rq codes are not 'prepared' data: the wrong payload is caught first
    _fails(tmp_path, capsys, edit, "needs prepared")
    register(
        StageKind(
            "loop_test",
            run="mscg_lightning.data.stage:run",
            inputs={"src": get("rq").inputs["embeddings"]},
            provides="embeddings",
        )
    )
    try:

        def loop(data):
            data["a"] = {"kind": "loop_test", "inputs": {"src": "b"}}
            data["b"] = {"kind": "loop_test", "inputs": {"src": "a"}}

        _fails(tmp_path, capsys, loop, "a -> b -> a form a cycle")
    finally:
        KINDS.pop("loop_test")


def test_run_dir_under_a_file_and_unknown_instance(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["fit", "--config", str(TINY), "--run_dir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "is a file, not a directory" in err and err.count("\n") == 1
    code = main(["fit", "--config", str(TINY), "--run_dir", str(tmp_path / "r"), "--stages", "x"])
    assert code == 2 and "unknown stage 'x'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_graph_order_is_topological_in_config_order():
    raw = yaml.safe_load(COMPARE.read_text())
    kinds = discover(raw)
    assert kinds["rq_text"] == "rq" and kinds["tiger"] == "genrec"
    from mscg_lightning.config import chain_parser

    config = chain_parser(instances=kinds).parse_args(["--config", str(COMPARE)])
    graph = build_graph(config, kinds)
    order = graph.order()
    for name, inst in graph.instances.items():
        assert all(order.index(u) < order.index(name) for u in inst.upstream)
    assert graph.model_rows() == [
        "sasrec",
        "mscgrec",
        "tiger",
        "no_const_train",
        "no_pos_emb",
        "masking",
    ]
    assert graph.closure(["tiger"]) == ["prepare", "text_embed", "rq_text", "tiger"]
    assert list(graph.instances["mscgrec"].inputs) == ["prepare", "text", "image", "collab"]


def test_every_kind_is_registered():
    expected = {"prepare", "sasrec", "text_embed", "image_embed", "dino_rq", "rq", "rq_xmodal"}
    assert expected | {"genrec"} <= set(KINDS)
    for kind in KINDS.values():
        assert callable(kind.runner())


def test_parts_are_addressed_and_validated(tmp_path):
    """``instance:part``: a part directory with its own manifest, or a prepare column."""
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    Manifest(
        "prepare", "h", kind="prepare", extra={"given_codes": {"lemb": 4}, "given_embeddings": {}}
    ).write(prepared)
    xm = tmp_path / "xm"
    (xm / "text").mkdir(parents=True)
    Manifest("xm", "h", kind="rq_xmodal", parts={"text": "codes"}).write(xm)
    Manifest("xm:text", "h").write(xm / "text")
    assert resolve_source(tmp_path, "xm:text").path == xm / "text"
    assert resolve_source(tmp_path, "prepare:codes_lemb").column == "codes_lemb"
    with pytest.raises(MscgError, match="has no column 'codes_vit'.*codes_lemb"):
        resolve_source(tmp_path, "prepare:codes_vit")
    with pytest.raises(MscgError, match="has no part 'image'"):
        resolve_source(tmp_path, "xm:image")
    assert split_source("xm:text") == ("xm", "text") and split_source("rq") == ("rq", None)


def test_xmodal_parts_type_check(tmp_path):
    """A genrec reads rq_xmodal's parts by name; the whole artifact is no codes artifact."""
    kinds = {"prepare": "prepare", "te": "text_embed", "ie": "image_embed", "xm": "rq_xmodal"}
    kinds.update(g="genrec", m="macrec")
    model = Namespace(class_path="x.Y", init_args=Namespace())

    def config(modalities):
        return Namespace(
            run_dir=str(tmp_path / "r"),
            seed=0,
            reference=None,
            prepare=Namespace(inputs={}),
            te=Namespace(inputs={}),
            ie=Namespace(inputs={}),
            xm=Namespace(inputs={"text": "te", "image": "ie"}, model=model),
            g=Namespace(inputs={}, model=model, modalities=modalities, target="text"),
            m=Namespace(inputs={"text": "xm:text", "image": "xm:image"}, model=model),
        )

    graph = build_graph(config({"text": "xm:text", "image": "xm:image"}), kinds)
    assert graph.order() == ["prepare", "te", "ie", "xm", "g", "m"]
    assert graph.model_rows() == ["g", "m"]  # MACRec is a row of the comparison table
    with pytest.raises(MscgError, match="read by part: name one of xm:text, xm:image"):
        build_graph(config({"text": "xm"}), kinds)


XMODAL = {
    "kind": "rq_xmodal",
    "inputs": {"text": "text_embed", "image": "image_embed"},
    "model": {
        "class_path": "mscg_lightning.stages.rq_xmodal.module.CrossModalRQModule",
        "init_args": {
            "latent_dim": 8,
            "hidden_dims": [16],
            "levels": 2,
            "codebook_size": 4,
            "pseudo_label_clusters": 4,
            "pseudo_label_iters": 3,
            "kmeans_iters": 2,
        },
    },
    "data": {
        "class_path": "mscg_lightning.stages.rq_xmodal.module.PairedEmbeddingsDataModule",
        "init_args": {"batch_size": 16},
    },
}


def test_a_kind_with_parts_feeds_genrec_through_the_graph(tmp_path, capsys):
    """rq_xmodal writes parts text/ and image/; a genrec instance reads them as xmodal:text."""

    def edit(data):
        data["xmodal"] = {**XMODAL, "trainer": data["rq_text"]["trainer"]}
        data["mscgrec"]["modalities"] = {
            "text": "xmodal:text",
            "image": "xmodal:image",
            "collab": "rq_collab",
        }
        for name in ("tiger", "no_const_train", "no_pos_emb", "masking", "rq_text", "rq_image"):
            del data[name]

    config = _variant(tmp_path, edit)
    run = tmp_path / "run"
    args = ["fit", "--config", str(config), "--run_dir", str(run)]
    assert main([*args, "--data_root", str(REPO / "tests" / "fixtures")]) == 0
    manifest = Manifest.read(run / "xmodal")
    assert manifest.kind == "rq_xmodal" and manifest.parts == {"text": "codes", "image": "codes"}
    genrec = Manifest.read(run / "mscgrec")
    assert genrec.kind == "genrec" and set(genrec.inputs) == {"prepare", "xmodal", "rq_collab"}
    layout = genrec.extra["token_layout"]
    assert layout["modalities"] == ["text", "image", "collab"]
    assert "mscgrec " in capsys.readouterr().out


def test_bbq_feeds_a_bbqrec_genrec_through_the_graph(tmp_path, capsys, tiny_bbq):
    """The registered bbq kind writes triple codes (+ parts); a genrec instance reads them with
    similarity attention, and the comparison table has the BBQRec row."""

    def edit(data):
        data["bbq"] = {
            "kind": "bbq",
            "inputs": {"text": "text_embed"},  # image is an optional slot: left unset here
            **tiny_bbq(),
            "trainer": data["rq_text"]["trainer"],
        }
        tiger = data["tiger"]
        args = {**tiger["model"]["init_args"], "sim_attention": True}
        data["bbqrec"] = {
            **tiger,
            "model": {**tiger["model"], "init_args": args},
            "modalities": {"bbq": "bbq"},
            "target": "bbq",
        }
        for name in ("mscgrec", "tiger", "no_const_train", "no_pos_emb", "masking"):
            del data[name]
        for name in ("rq_image", "rq_collab", "image_embed", "sasrec"):
            data.pop(name, None)
        data["reference"] = "bbqrec"

    config = _variant(tmp_path, edit)
    run = tmp_path / "run"
    args = ["fit", "--config", str(config), "--run_dir", str(run)]
    assert main([*args, "--data_root", str(REPO / "tests" / "fixtures")]) == 0
    manifest = Manifest.read(run / "bbq")
    assert manifest.kind == "bbq" and set(manifest.parts) == {"id", "text"}
    genrec = Manifest.read(run / "bbqrec")
    assert genrec.kind == "genrec" and "bbq" in genrec.inputs
    assert "bbqrec " in capsys.readouterr().out


def test_an_instance_seed_reruns_that_instance_only(tmp_path):
    """`--<instance>.seed` changes that instance's hash (it reruns with its own seed), nothing
    upstream; unset, hashes are those of the run seed; a negative one is refused."""
    run = tmp_path / "run"
    base = ["fit", "--config", str(COMPARE), "--run_dir", str(run)]
    base += ["--stages", "prepare,text_embed,rq_text,tiger"]
    assert main(base) == 0
    before = {n: Manifest.read(run / n).config_hash for n in ("rq_text", "tiger")}
    assert main([*base, "--tiger.seed", "0"]) == 0  # the run's seed, said explicitly: same run
    assert Manifest.read(run / "tiger").config_hash == before["tiger"]
    assert main([*base, "--tiger.seed", "3"]) == 0
    after = {n: Manifest.read(run / n).config_hash for n in ("rq_text", "tiger")}
    assert after["rq_text"] == before["rq_text"]
    assert after["tiger"] != before["tiger"]
    assert main([*base, "--tiger.seed", "-1"]) == 2
