"""Raw files edited in place rerun prepare and what follows (issue 21 item 1); the fingerprint's
stat fast path agrees with hashing every file every time."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mscg_lightning.data import fingerprints

STAGES = "prepare,sasrec"


def statuses(out: str) -> dict[str, str]:
    """{stage: 'running' | 'up to date'} from the `[mscg] stage: ...` lines of `mscg fit`."""
    found = {}
    for line in out.splitlines():
        for stage in STAGES.split(","):
            if line.startswith(f"[mscg] {stage}: running"):
                found[stage] = "running"
            elif line.startswith(f"[mscg] {stage}: up to date"):
                found[stage] = "up to date"
    return found


@pytest.fixture
def data(tmp_path, rel) -> Path:
    """A copy of the tiny fixture, which the tests edit."""
    root = tmp_path / "data"
    shutil.copytree(rel.FIXTURES, root)
    return root


def fit(mscg, rel, tmp_path, data):
    result = mscg("fit", *rel.tiny_args(tmp_path / "run", "--stages", STAGES, "--data_root", data))
    assert result.code == 0, result.err
    return result


def test_edited_inputs_rerun_prepare_and_the_stages_after_it(tmp_path, data, mscg, rel):
    folder = data / "tiny-unisrec"
    assert statuses(fit(mscg, rel, tmp_path, data).out) == {s: "running" for s in STAGES.split(",")}
    assert statuses(fit(mscg, rel, tmp_path, data).out) == {
        s: "up to date" for s in STAGES.split(",")
    }
    # touched, same content: still up to date (the content hash decides)
    text = folder / "Tiny.text"
    st = text.stat()
    os.utime(text, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert set(statuses(fit(mscg, rel, tmp_path, data).out).values()) == {"up to date"}
    # edited in place, same size: prepare and sasrec rerun, and the message names the file
    text.write_text(text.read_text().replace("Industrial", "Industriel"))
    result = fit(mscg, rel, tmp_path, data)
    assert statuses(result.out) == {s: "running" for s in STAGES.split(",")}
    assert f"the input file {text.resolve()} changed" in result.out
    assert set(statuses(fit(mscg, rel, tmp_path, data).out).values()) == {"up to date"}
    # interactions replaced by another file (same content but one user's last item)
    test = folder / "Tiny.test.inter"
    lines = test.read_text().splitlines(keepends=True)
    valid = (folder / "Tiny.valid.inter").read_text().splitlines(keepends=True)
    user, hist, _ = lines[3].rstrip("\n").split("\t")
    new_target = valid[3].split("\t")[2].strip()  # an item the user already has: still valid
    lines[3] = f"{user}\t{hist}\t{new_target}\n"
    replacement = tmp_path / "new.inter"
    replacement.write_text("".join(lines))
    os.replace(replacement, test)
    assert statuses(fit(mscg, rel, tmp_path, data).out)["prepare"] == "running"
    # a feature file changed: prepare reruns
    feat = folder / "Tiny.feat1CLS"
    raw = bytearray(feat.read_bytes())
    raw[0:4] = b"\x00\x00\x80\x3f"  # 1.0f
    feat.write_bytes(bytes(raw))
    assert statuses(fit(mscg, rel, tmp_path, data).out)["prepare"] == "running"
    # a run directory kept inside the data folder: not an input
    mscg("prepare", *rel.tiny_args(folder / "runs" / "x", "--data_root", data))
    assert set(statuses(fit(mscg, rel, tmp_path, data).out).values()) == {"up to date"}
    # a file added to the dataset folder (a layout may glob it): prepare reruns
    (folder / "Tiny.extra.txt").write_text("new\n")
    result = fit(mscg, rel, tmp_path, data)
    assert statuses(result.out)["prepare"] == "running"
    assert "added 'Tiny.extra.txt'" in result.out


def test_a_record_that_is_missing_makes_prepare_stale(tmp_path, data, mscg, rel):
    fit(mscg, rel, tmp_path, data)
    (tmp_path / "run" / "prepared" / fingerprints.RECORD).unlink()
    assert statuses(fit(mscg, rel, tmp_path, data).out)["prepare"] == "running"
    assert (tmp_path / "run" / "prepared" / fingerprints.RECORD).is_file()


def _reference_changed(record: dict) -> bool:
    """The simple reference: hash every recorded file again, list every folder again."""
    for name, (_, _, digest) in record["files"].items():
        if not Path(name).is_file() or fingerprints.content_hash(Path(name)) != digest:
            return True
    return any(fingerprints.listing(Path(d)) != n for d, n in record["listings"].items())


@pytest.mark.parametrize(
    "edit",
    ["none", "touch", "same_size_edit", "append", "delete", "add_file", "restore_mtime_edit"],
)
def test_fast_path_agrees_with_hashing_everything(edit, tmp_path, monkeypatch):
    folder = tmp_path / "d"
    folder.mkdir()
    files = [folder / f"f{i}.txt" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([65 + i]) * 100)
    art = tmp_path / "art"
    art.mkdir()
    record = fingerprints.fingerprint(files, folder)
    (art / fingerprints.RECORD).write_text(__import__("json").dumps(record))
    target = files[1]
    st = target.stat()
    if edit == "touch":
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 5))
    elif edit == "same_size_edit":
        target.write_bytes(b"Z" * 100)
    elif edit == "append":
        with open(target, "ab") as f:
            f.write(b"more")
    elif edit == "delete":
        target.unlink()
    elif edit == "add_file":
        (folder / "new.txt").write_text("x")
    elif edit == "restore_mtime_edit":
        # the fast path's known blind spot: same size and mtime restored -> taken as unchanged
        target.write_bytes(b"Z" * 100)
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    reference = _reference_changed(record)
    hashed = []
    real_hash = fingerprints.content_hash
    monkeypatch.setattr(
        fingerprints, "content_hash", lambda p: hashed.append(p) or real_hash(Path(p))
    )
    fast = fingerprints.stale_reason(art) is not None
    if edit == "restore_mtime_edit":
        assert reference and not fast and hashed == []
        return
    assert fast == reference
    # only files whose stat changed were hashed
    assert all(Path(p) == target for p in hashed)
    if edit in ("none", "add_file"):
        assert hashed == []
