"""Damaged files: each kind vitlab loads, truncated at 20 seeded offsets and with 20 seeded flipped bytes.

Kinds and loaders: a run's checkpoint.pt (`--resume`), its best.pt (`load_trained_model`, the lessons'
`--checkpoint`), the shipped vit_tiny base (`vitlab.shipped`, SHA-256 against its card) and a state dict given as
`--pretrained PATH`. The guarantee, exactly: a truncated file is always refused with a VitlabError naming it and
saying it is damaged; a flipped byte is refused the same way, or, when it lands in zip bookkeeping nothing reads (a
timestamp, padding), loads exactly what was written. A flip inside any entry (the pickle, a tensor's bytes) is
always refused: torch.load does not check the CRC-32s, vitlab.integrity does.
"""

from __future__ import annotations

import random
import shutil
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from vitlab import shipped
from vitlab.errors import CheckpointError, VitlabError, WeightsUnavailableError
from vitlab.model import build_model
from vitlab.teaching.cells import run_lesson_file
from vitlab.training import finetune
from vitlab.training.checkpoint import BEST, LAST, load_checkpoint, load_trained_model

SEED, CASES = 14, 20


def truncations(data: bytes, seed: int) -> Iterator[tuple[int, bytes]]:
    """CASES seeded (offset, data cut at offset) pairs, offsets anywhere from 0 to the last byte."""
    for offset in sorted(random.Random(seed).sample(range(len(data)), CASES)):
        yield offset, data[:offset]


def flips(data: bytes, seed: int) -> Iterator[tuple[int, bytes]]:
    """CASES seeded (position, data with that byte XORed by a nonzero mask) pairs."""
    rng = random.Random(seed)
    for position in sorted(rng.sample(range(len(data)), CASES)):
        damaged = bytearray(data)
        damaged[position] ^= rng.randrange(1, 256)
        yield position, bytes(damaged)


def entry_ranges(path: Path) -> list[range]:
    """The byte ranges of every zip entry's data (the pickle, each tensor) in a torch file: local header parsed."""
    ranges = []
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name_length, extra_length = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            start = info.header_offset + 30 + name_length + extra_length
            ranges.append(range(start, start + info.compress_size))
    return ranges


def same(a, b) -> bool:
    """Deep equality of loaded checkpoints: tensors bit for bit (dtype and shape too), everything else by ==."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def assert_damaged_message(error: BaseException, path: Path) -> None:
    message = str(error)
    assert str(path) in message and "damaged" in message, message
    assert any(word in message for word in ("copy", "Rebuild", "re-save", "again")), message  # what to do


@pytest.fixture(scope="module")
def demo_files(demo_cache: Path) -> dict[str, Path]:
    return {LAST: demo_cache / "demo" / LAST, BEST: demo_cache / "demo" / BEST}


@pytest.mark.parametrize("name", [LAST, BEST])
def test_a_truncated_checkpoint_is_always_a_checkpoint_error(demo_files: dict, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    for _, data in truncations(demo_files[name].read_bytes(), SEED):
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path) if name == LAST else load_trained_model(path)
        assert_damaged_message(caught.value, path)


@pytest.mark.parametrize("name", [LAST, BEST])
def test_a_flipped_byte_is_refused_or_loads_exactly_what_was_written(
    demo_files: dict, name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    original = load_checkpoint(demo_files[name])
    payload = entry_ranges(demo_files[name])
    path, refused, in_entries = tmp_path / name, 0, 0
    for position, data in flips(demo_files[name].read_bytes(), SEED + 1):
        path.write_bytes(data)
        inside = any(position in span for span in payload)
        in_entries += inside
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as error:
            assert_damaged_message(error, path)
            refused += 1
            continue
        assert not inside, f"a flip at byte {position}, inside an entry, loaded silently"
        assert same(loaded, original), f"a flip at byte {position} loaded different content"
    with capsys.disabled():
        print(f"\n{name}: {CASES} flips, {in_entries} inside entries, {refused} refused, "
              f"{CASES - refused} in unread bookkeeping loaded identical content")
    assert refused >= in_entries > CASES // 2  # most of a checkpoint is tensor bytes: most flips land there


def test_resume_from_a_damaged_checkpoint_exits_2_without_a_traceback(
    demo_files: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = demo_files[LAST].read_bytes()
    payload = entry_ranges(demo_files[LAST])
    inside = [case for case in flips(data, SEED + 1) if any(case[0] in span for span in payload)]
    for _, damaged in [*truncations(data, SEED), *inside]:
        (tmp_path / LAST).write_bytes(damaged)
        assert finetune.main(["--resume", str(tmp_path), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / LAST}" in err and "damaged" in err and "Traceback" not in err


@pytest.mark.slow
def test_a_lesson_given_a_damaged_checkpoint_exits_2(demo_files: dict, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    file = next((Path(__file__).resolve().parents[1] / "lessons").glob("12_*.py"))  # the logit lens
    data = demo_files[BEST].read_bytes()
    start = max(entry_ranges(demo_files[BEST]), key=len).start  # the largest tensor's first byte
    flipped = data[:start] + bytes([data[start] ^ 0x01]) + data[start + 1:]
    for damaged in (data[: len(data) // 2], flipped):
        (tmp_path / BEST).write_bytes(damaged)
        assert run_lesson_file(file, ["--checkpoint", str(tmp_path / BEST), "--out", str(tmp_path / "figures")]) == 2
        err = capsys.readouterr().err
        assert str(tmp_path / BEST) in err and "damaged" in err


@pytest.fixture
def base_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of vitlab/weights/ that the package reads instead of its own (to damage it without harm)."""
    folder = tmp_path / "weights"
    shutil.copytree(shipped.shipped_weights_dir(), folder)
    monkeypatch.setattr(shipped, "shipped_weights_dir", lambda: folder)
    return shipped.shipped_base_file()


def test_a_damaged_shipped_base_is_always_refused(base_copy: Path) -> None:
    data = base_copy.read_bytes()
    for _, damaged in [*truncations(data, SEED), *flips(data, SEED + 1)]:
        base_copy.write_bytes(damaged)
        with pytest.raises(WeightsUnavailableError) as caught:
            build_model("vit_tiny", num_classes=4, pretrained=True)
        assert_damaged_message(caught.value, base_copy)
        assert shipped.SHIP_COMMANDS["fractal"] in str(caught.value)


def test_the_demo_on_a_damaged_base_exits_2(base_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base_copy = shipped.shipped_base_file(name="fashion")  # the base the demo preset fine-tunes, in the copy
    base_copy.write_bytes(base_copy.read_bytes()[:1000])
    assert finetune.main(["--preset", "demo", "--subset", "64", "--quiet", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{base_copy} is damaged" in err and "Traceback" not in err
    assert not (tmp_path / "run" / LAST).exists()


def test_a_damaged_pretrained_state_dict_is_refused_or_loads_exactly(tmp_path: Path) -> None:
    source = shipped.shipped_base_file()  # a plain state dict of vit_tiny's tensors, as --pretrained PATH takes
    clean = build_model("vit_tiny", num_classes=4, pretrained=source).state_dict()
    payload = entry_ranges(source)
    path, refused = tmp_path / "weights.pt", 0
    cases = [(None, damaged) for _, damaged in truncations(source.read_bytes(), SEED)]
    cases += list(flips(source.read_bytes(), SEED + 1))
    for position, data in cases:
        path.write_bytes(data)
        try:
            loaded = build_model("vit_tiny", num_classes=4, pretrained=path).state_dict()
        except VitlabError as error:
            assert_damaged_message(error, path)
            refused += 1
            continue
        assert position is not None, "a truncated state dict loaded"
        assert not any(position in span for span in payload), f"a flip at byte {position} loaded silently"
        assert all(torch.equal(loaded[k], clean[k]) for k in clean if not k.startswith("heads."))
    assert refused >= CASES  # every truncation, and every flip inside an entry


def test_the_job_given_a_damaged_pretrained_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(shipped.shipped_base_file().read_bytes()[:-100])
    run = ["--preset", "demo", "--subset", "64", "--quiet", "--pretrained", str(path), "--out", str(tmp_path / "r")]
    assert finetune.main(run) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "damaged" in err and "Traceback" not in err


def _outside_entries(path: Path) -> list[int]:
    """Every byte position of a torch file that is zip bookkeeping: local headers, padding, the directory."""
    payload = entry_ranges(path)
    return [i for i in range(path.stat().st_size) if not any(i in span for span in payload)]


def test_flips_in_the_zip_bookkeeping_are_refused_or_load_exactly(demo_files: dict, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    data = demo_files[BEST].read_bytes()
    original = load_checkpoint(demo_files[BEST])
    rng = random.Random(SEED + 2)
    path, refused = tmp_path / BEST, 0
    for position in rng.sample(_outside_entries(demo_files[BEST]), CASES):
        damaged = bytearray(data)
        damaged[position] ^= rng.randrange(1, 256)
        path.write_bytes(bytes(damaged))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as error:
            assert_damaged_message(error, path)
            refused += 1
            continue
        assert same(loaded, original), f"a flip at byte {position} loaded different content"
    with capsys.disabled():
        print(f"\n{BEST}: {CASES} flips in zip bookkeeping, {refused} refused, {CASES - refused} loaded identical")


def test_torch_load_alone_takes_a_flipped_weight_vitlab_does_not(demo_files: dict, tmp_path: Path) -> None:
    data = demo_files[BEST].read_bytes()
    start = max(entry_ranges(demo_files[BEST]), key=len).start  # the largest tensor's first byte
    (tmp_path / BEST).write_bytes(data[:start] + bytes([data[start] ^ 0x80]) + data[start + 1:])
    silent = torch.load(tmp_path / BEST, weights_only=True)  # torch does not check the CRC-32: no error
    assert not same(silent, load_checkpoint(demo_files[BEST]))  # ... and the content differs
    with pytest.raises(CheckpointError, match="CRC-32"):
        load_checkpoint(tmp_path / BEST)
