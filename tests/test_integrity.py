"""Digests of saved files: changed bytes in a model or checkpoint are refused in one line that says what is
still intact; files saved before digests still load."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_one_line_error, dqn

from dqn_cli import integrity
from dqn_cli.checkpoint import load_checkpoint
from dqn_cli.errors import UserError
from dqn_cli.integrity import DIGEST_KEY, Verdict, tensors_digest, verdict
from dqn_cli.runfiles import load_model

DIGEST_MISMATCH = "is corrupt (its"


@pytest.fixture
def run(tiny_run: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny trained run, to damage."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))


def header(path: Path) -> tuple[int, dict]:
    """The safetensors header of ``path``: its length and its JSON."""
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    return length, json.loads(data[8 : 8 + length])


def flip_bit(path: Path, position: int) -> None:
    data = bytearray(path.read_bytes())
    data[position] ^= 0x01
    path.write_bytes(bytes(data))


def flip_tensor_byte(path: Path, prefix: str = "") -> str:
    """Flip one bit in the middle of the first tensor (in name order) whose name starts with ``prefix``;
    returns its name."""
    length, table = header(path)
    name = min(key for key in table if key != "__metadata__" and key.startswith(prefix))
    start, end = table[name]["data_offsets"]
    flip_bit(path, 8 + length + (start + end) // 2)
    return name


def replace_in_header(path: Path, old: bytes, new: bytes) -> None:
    """Change bytes inside the header in place (same length, so the file stays well-formed)."""
    assert len(old) == len(new)
    data = path.read_bytes()
    length = int.from_bytes(data[:8], "little")
    at = data.index(old, 8, 8 + length)
    path.write_bytes(data[:at] + new + data[at + len(old) :])


def resave_without_digest(path: Path, metadata: dict[str, str] | None) -> None:
    """Rewrite a file as versions before digests wrote it: the same tensors, ``metadata`` without one."""
    from safetensors.numpy import load_file, save_file

    save_file(load_file(path), path, metadata=metadata)


# ------------------------------------------------------------------------------------- the digest itself


def test_digest_is_sha256_of_the_description_then_of_each_chunk(monkeypatch: pytest.MonkeyPatch):
    """Pinned by hand, so a change of definition (which would refuse every saved file) cannot slip in."""
    monkeypatch.setattr(integrity, "CHUNK_BYTES", 4)
    tensors = {"b": np.arange(6, dtype=np.uint8), "a": np.array([[1.0]], dtype=np.float32)}
    metadata = {"step": "7", DIGEST_KEY: "ignored"}
    outer = hashlib.sha256(b'[{"step": "7"}, [["a", "float32", [1, 1]], ["b", "uint8", [6]]]]')
    for chunk in (np.float32(1.0).tobytes(), bytes([0, 1, 2, 3]), bytes([4, 5])):
        outer.update(hashlib.sha256(chunk).digest())
    assert tensors_digest(metadata, tensors) == outer.hexdigest()


def test_digest_tells_apart_every_change_that_keeps_the_file_readable():
    base = {"x": np.array([1, 2, 3, 4], dtype=np.uint8)}
    digest = tensors_digest({"step": "5"}, base)
    changed = [
        tensors_digest({"step": "6"}, base),  # a metadata value
        tensors_digest({"step": "5"}, {"y": base["x"]}),  # a name
        tensors_digest({"step": "5"}, {"x": base["x"].view(np.int8)}),  # a dtype of the same size
        tensors_digest({"step": "5"}, {"x": base["x"].reshape(2, 2)}),  # a shape of the same size
        tensors_digest({"step": "5"}, {"x": np.array([1, 2, 3, 5], dtype=np.uint8)}),  # a byte
    ]
    assert len({digest, *changed}) == 6
    assert tensors_digest({"step": "5", DIGEST_KEY: "whatever"}, dict(base)) == digest


def test_a_missing_digest_is_age_unless_the_format_always_has_one():
    tensors = {"x": np.zeros(3, dtype=np.float32)}
    assert verdict({}, tensors, must_be_signed=False) is Verdict.UNSIGNED
    assert verdict({}, tensors, must_be_signed=True) is Verdict.CORRUPT
    assert verdict(integrity.signed({}, tensors), tensors, must_be_signed=True) is Verdict.INTACT


# ------------------------------------------------------------------------------ models, through the CLI


@pytest.mark.slow
@pytest.mark.parametrize("command", ["eval", "record"])
def test_a_flipped_byte_in_the_final_model_is_refused_naming_the_intact_best(run: Path, command: str):
    flip_tensor_byte(run / "model.safetensors")
    result = dqn(command, str(run), "--final", "--episodes", "1", cwd=run.parent)
    assert_one_line_error(
        result,
        f"model.safetensors in {run} {DIGEST_MISMATCH} weights do not match their digest)",
        "; best.safetensors is intact",
        f"(use {run / 'best.safetensors'} instead)",
    )
    assert dqn("eval", str(run), "--episodes", "1", cwd=run.parent).returncode == 0  # best still plays


@pytest.mark.slow
def test_a_flipped_byte_in_the_best_model_is_refused_naming_the_intact_final(run: Path):
    flip_tensor_byte(run / "best.safetensors")
    result = dqn("eval", str(run), "--episodes", "1", cwd=run.parent)
    assert_one_line_error(
        result,
        f"best.safetensors in {run} {DIGEST_MISMATCH}",
        "; model.safetensors is intact",
        f"(use {run / 'model.safetensors'} instead)",
    )


def test_both_models_damaged_leaves_nothing_to_suggest(run: Path):
    flip_tensor_byte(run / "model.safetensors")
    flip_tensor_byte(run / "best.safetensors")
    with pytest.raises(UserError) as error:
        load_model(run / "best.safetensors")
    assert str(error.value) == (
        f"best.safetensors in {run} is corrupt (its weights do not match their digest); "
        "model.safetensors is corrupt too"
    )


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.mark.slow
def test_a_flipped_byte_in_the_replay_of_a_checkpoint_is_refused_and_nothing_is_written(run: Path):
    assert flip_tensor_byte(run / "checkpoint.safetensors", "replay/").startswith("replay/")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = dqn("train", "--resume", str(run), cwd=run.parent)
    assert_one_line_error(
        result,
        f"checkpoint.safetensors in {run} {DIGEST_MISMATCH} contents do not match their digest), "
        "so training cannot resume from it; best.safetensors and model.safetensors are intact",
    )
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_damaged_checkpoint_reports_a_damaged_model_too(run: Path):
    flip_tensor_byte(run / "checkpoint.safetensors", "agent/")
    flip_tensor_byte(run / "model.safetensors")
    with pytest.raises(UserError) as error:
        load_checkpoint(run)
    assert str(error.value).endswith("; best.safetensors is intact, model.safetensors is corrupt too")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b'"step":"600"', b'"step":"700"'),  # valid JSON still: the run would resume at the wrong step
        (b'"replay/storage/rewards"', b'"replay/storage/rewardr"'),  # a tensor renamed
        (b'"tensors_sha256":"', b'"tensors_sha257":"'),  # the digest itself lost
        (b'"dqn-checkpoint/3"', b'"dqn-checkpoint/2"'),  # a format that had no digest
    ],
)
def test_a_changed_checkpoint_header_is_refused(run: Path, old: bytes, new: bytes):
    replace_in_header(run / "checkpoint.safetensors", old, new)
    with pytest.raises(UserError, match=r"^checkpoint\.safetensors in .* is (corrupt|not a dqn checkpoint)"):
        load_checkpoint(run)


def test_a_flipped_byte_anywhere_in_a_model_header_is_refused(run: Path):
    """Every byte of the header in turn: none loads as if nothing had happened."""
    path = run / "best.safetensors"
    original = path.read_bytes()
    length = int.from_bytes(original[:8], "little")
    for position in range(8 + length):
        path.write_bytes(original)
        flip_bit(path, position)
        with pytest.raises(UserError, match=r"^best\.safetensors in .* is corrupt"):
            load_model(path)


# ----------------------------------------------------------------------------- files saved before digests


def test_models_saved_before_digests_still_load_and_are_reported_as_unchecked(run: Path):
    expected = load_model(run / "best.safetensors").weights
    resave_without_digest(run / "best.safetensors", None)  # what save_model wrote before digests
    assert header(run / "best.safetensors")[1].get("__metadata__") is None
    weights = load_model(run / "best.safetensors").weights
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[key], expected[key]) for key in weights)
    flip_tensor_byte(run / "model.safetensors")
    with pytest.raises(UserError) as error:
        load_model(run / "model.safetensors")
    assert str(error.value).endswith(
        f"; best.safetensors predates digests (unchecked) (use {run / 'best.safetensors'} instead)"
    )


def test_a_model_whose_header_metadata_lost_its_digest_is_refused(run: Path):
    resave_without_digest(run / "model.safetensors", {"something": "else"})
    with pytest.raises(UserError, match=DIGEST_MISMATCH.replace("(", r"\(")):
        load_model(run / "model.safetensors")


def test_checkpoints_saved_before_digests_still_load(run: Path):
    path = run / "checkpoint.safetensors"
    expected = load_checkpoint(run)
    metadata = {k: v for k, v in header(path)[1]["__metadata__"].items() if k != DIGEST_KEY}
    resave_without_digest(path, {**metadata, "format": "dqn-checkpoint/2"})
    loaded = load_checkpoint(run)
    assert loaded.step == expected.step == 600
    assert loaded.state.keys() == expected.state.keys()
    arrays = [key for key, value in expected.state.items() if isinstance(value, np.ndarray)]
    assert arrays and all(np.array_equal(loaded.state[key], expected.state[key]) for key in arrays)
    assert {k: v for k, v in loaded.state.items() if k not in arrays} == {
        k: v for k, v in expected.state.items() if k not in arrays
    }
