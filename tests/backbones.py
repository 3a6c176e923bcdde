"""Test backbones beyond `tiny:LxH`: a random-init MPNet model directory with MPNet's own
tokenizer layout (`<s>`, `<pad>`, `</s>`, `<unk>`, BERT's uncased word pieces, `<mask>`, as
all-mpnet-base-v2 has it; the word pieces borrowed from the packaged MiniLM), and a fake
split zip of such a directory standing in for the `mpnet` extra's parts. Nothing is
downloaded."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch

from hiersearch.model.packaged import SplitZipBackbone, packaged_minilm_dir

# MPNet's special tokens around BERT's word pieces, in all-mpnet-base-v2's vocabulary order.
MPNET_HEAD = ["<s>", "<pad>", "</s>", "<unk>"]
MPNET_TAIL = ["<mask>"]
# What AutoTokenizer builds MPNet's word-piece tokenizer from, beside vocab.txt.
TOKENIZER_CONFIG = {
    "tokenizer_class": "MPNetTokenizer", "do_lower_case": True, "model_max_length": 512,
    "bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
    "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>",
}


def write_tiny_mpnet(directory: Path, layers: int = 4, hidden: int = 32, seed: int = 0,
                     word_pieces: int | None = None) -> Path:
    """A random-init MPNet (seeded) and its tokenizer in `directory` (a local model dir).
    `word_pieces`: keep only the first n of BERT's (a model of a few KB; most words then
    tokenize to <unk>)."""
    from transformers import MPNetConfig, MPNetModel

    directory.mkdir(parents=True, exist_ok=True)
    bert = (packaged_minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = [*MPNET_HEAD, *bert[:word_pieces], *MPNET_TAIL]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG), "utf-8")
    config = MPNetConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=max(1, hidden // 16), intermediate_size=4 * hidden,
                         max_position_embeddings=514, pad_token_id=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        MPNetModel(config).save_pretrained(directory)  # with a pooler, as a checkpoint has
    return directory


# A split-zip backbone like `mpnet`, whose parts are fake distributions (`install_fake_parts`).
FAKE = SplitZipBackbone(spec="fake-mpnet", extra="fake", root="fake-mpnet-v1",
                        distributions=("fake-mpnet-part-001", "fake-mpnet-part-002",
                                       "fake-mpnet-part-003"))


def split_zip(model_dir: Path, root: str, out: Path, parts: int) -> list[Path]:
    """`model_dir` zipped under `root/` (deflated, as the real parts are) and cut into
    `parts` pieces `out/<root>.zip.001` ..: the pieces concatenate to the zip."""
    out.mkdir(parents=True, exist_ok=True)
    whole = out / f"{root}.zip"
    with zipfile.ZipFile(whole, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{root}/", "")
        for file in sorted(model_dir.iterdir()):
            archive.write(file, f"{root}/{file.name}")
    data = whole.read_bytes()
    whole.unlink()
    step = -(-len(data) // parts)
    pieces = []
    for number in range(parts):
        piece = out / f"{root}.zip.{number + 1:03d}"
        piece.write_bytes(data[number * step : (number + 1) * step])
        pieces.append(piece)
    return pieces


def install_fake_parts(site: Path, pieces: list[Path], backbone: SplitZipBackbone) -> None:
    """Each piece as an installed distribution under `site` (put `site` on sys.path): its
    file at `<package>/input/<name>` and a RECORD that lists it with its size, as the real
    parts' wheels install them."""
    for name, piece in zip(backbone.distributions, pieces, strict=True):
        package = name.replace("-", "_")
        target = site / package / "input" / piece.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(piece.read_bytes())
        info = site / f"{package}-0.0.1.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.0.1\n", encoding="utf-8"
        )
        (info / "RECORD").write_text(
            f"{package}/input/{piece.name},,{piece.stat().st_size}\n"
            f"{package}-0.0.1.dist-info/METADATA,,\n{package}-0.0.1.dist-info/RECORD,,\n",
            encoding="utf-8",
        )
