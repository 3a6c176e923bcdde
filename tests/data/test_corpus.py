from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from hiersearch.data.corpus import (
    SPLITS,
    Corpus,
    Document,
    finalize,
    format_stats,
    load_corpus_dir,
    manifest_matches,
    write_corpus,
)
from hiersearch.data.hierarchy import Hierarchy, Node
from hiersearch.data.loaders import (
    load_csv,
    load_eurlex57k,
    load_jsonl,
    load_mimic,
    load_mimic_iv,
)
from hiersearch.data.vocabularies import icd9_hierarchy
from hiersearch.errors import InputError


def small() -> Hierarchy:
    """Two domains, three topics, four leaves; leaf 'x2' has two parents."""
    return Hierarchy(
        [
            Node("D1", "politics", (), 1),
            Node("D2", "finance", (), 1),
            Node("T1", "elections", ("D1",), 2),
            Node("T2", "parties", ("D1",), 2),
            Node("T3", "banking", ("D2",), 2),
            Node("x1", "vote count", ("T1",), 3),
            Node("x2", "party funding", ("T2", "T3"), 3),
            Node("x3", "central bank", ("T3",), 3),
            Node("x4", "ballot", ("T1",), 3),
        ],
        "small",
    )


def three_splits(**extra: list[tuple[str, str, list[str]]]) -> dict[str, list]:
    raw = {
        "train": [("t1", "a vote", ["x1"]), ("t2", "money", ["x2", "zz"])],
        "dev": [("d1", "bank", ["x3"])],
        "test": [("s1", "ballot box", ["x4"])],
    }
    for split, docs in extra.items():
        raw[split] = raw[split] + docs
    return raw


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_finalize_augments_and_sorts_labels() -> None:
    corpus = finalize(three_splits(), small())
    assert corpus.splits["train"][0] == Document("t1", "a vote", ("D1", "T1", "x1"))
    assert corpus.splits["train"][1].labels == ("D1", "D2", "T2", "T3", "x2")
    assert set(corpus.splits) == set(SPLITS) and corpus.synthetic is False


def test_finalize_reports_unknown_labels_and_unlabelled_docs() -> None:
    raw = three_splits(train=[("t3", "lost", ["zz", "yy"])], test=[("s2", "lost", ["zz"])])
    corpus = finalize(raw, small())
    assert corpus.report.unknown_labels == {"zz": 3, "yy": 1}
    assert corpus.report.unlabelled_docs == {"train": 1, "dev": 0, "test": 1}
    assert [d.id for d in corpus.splits["train"]] == ["t1", "t2"]
    summary = corpus.report.summary()
    assert "4 occurrences of 2 labels" in summary and "zz (3)" in summary
    assert "2 documents" in summary and "train 1" in summary


def test_finalize_clean_report_says_so() -> None:
    assert (
        finalize({s: v[:1] for s, v in three_splits().items()}, small()).report.summary()
        == "all labels known; no document dropped"
    )


def test_finalize_empty_corpus_is_an_input_error() -> None:
    with pytest.raises(InputError, match="src: the corpus has no documents"):
        finalize({"train": [], "dev": [], "test": []}, small(), where="src")


def test_finalize_all_labels_unknown_is_an_input_error() -> None:
    raw = {s: [(f"{s}1", "text", ["nope"])] for s in SPLITS}
    with pytest.raises(InputError, match="none of the 1 distinct labels.*'small'.*nope"):
        finalize(raw, small())


def test_finalize_empty_split_and_duplicate_ids_are_input_errors() -> None:
    raw = three_splits()
    raw["dev"] = [("d1", "x", ["zz"])]
    with pytest.raises(InputError, match="dev split"):
        finalize(raw, small())
    with pytest.raises(InputError, match="'t1' occurs twice"):
        finalize(three_splits(test=[("t1", "again", ["x1"])]), small())


def test_corpus_truncate_drops_deep_labels_and_counts_them() -> None:
    corpus = finalize(three_splits(), small()).truncate(1, 2)
    assert corpus.hierarchy.label_counts() == [2, 3]
    assert corpus.splits["train"][0].labels == ("D1", "T1")
    assert corpus.report.out_of_range_labels == {"x1": 1, "x2": 1, "x3": 1, "x4": 1}
    assert corpus.report.unknown_labels == {"zz": 1}  # from the original load
    only_top = finalize(three_splits(), small()).truncate(2, 3)
    assert only_top.splits["dev"][0].labels == ("T3", "x3")


def test_fingerprint_covers_text_labels_and_hierarchy() -> None:
    base = finalize(three_splits(), small())
    assert base.fingerprint() == finalize(three_splits(), small()).fingerprint()
    raw = three_splits()
    raw["dev"] = [("d1", "bank!", ["x3"])]
    assert finalize(raw, small()).fingerprint() != base.fingerprint()
    raw["dev"] = [("d1", "bank", ["x2"])]
    assert finalize(raw, small()).fingerprint() != base.fingerprint()
    assert base.truncate(1, 3).fingerprint() == base.fingerprint()


def test_stats_count_documents_and_label_occurrences_per_level() -> None:
    stats = finalize(three_splits(), small()).stats()
    assert stats["documents"] == {"train": 2, "dev": 1, "test": 1}
    assert stats["labels_per_level"] == [2, 3, 4]
    assert stats["label_occurrences_per_level"]["train"] == [3, 3, 2]
    assert stats["labels_used_per_level"]["train"] == [2, 3, 2]
    assert stats["mean_labels_per_doc"]["train"] == 4.0
    assert stats["synthetic"] is False and stats["hierarchy"] == "small"


def test_format_stats_marks_synthetic_corpora() -> None:
    corpus = finalize(three_splits(), small())
    real = format_stats(corpus.stats())
    assert "SYNTHETIC" not in real and "documents" in real and "L3" in real
    fake = format_stats(finalize(three_splits(), small(), synthetic=True).stats())
    assert fake.splitlines()[0].startswith("*** SYNTHETIC corpus")


def eurlex_doc(celex: str, concepts: list[str]) -> dict:
    return {
        "celex_id": celex,
        "uri": "http://x",
        "type": "Regulation",
        "title": "T",
        "header": f"REGULATION {celex}",
        "recitals": "Whereas: (1) it is so.",
        "main_body": ["Article 1 one.", "Article 2 two."],
        "attachments": "Done at Brussels.",
        "concepts": concepts,
    }


def test_load_eurlex57k_reads_the_real_layout(tmp_path: Path) -> None:
    for split, docs in {
        "train": [("32010R0001", ["x1"]), ("32010R0002", ["x2", "9999"])],
        "dev": [("32010R0003", ["x3"])],
        "test": [("32010R0004", ["x4"])],
    }.items():
        (tmp_path / split).mkdir()
        for celex, concepts in docs:
            (tmp_path / split / f"{celex}.json").write_text(
                json.dumps(eurlex_doc(celex, concepts))
            )
    corpus = load_eurlex57k(tmp_path, small())
    doc = corpus.splits["train"][0]
    assert doc.id == "32010R0001" and doc.labels == ("D1", "T1", "x1")
    assert doc.text == (
        "REGULATION 32010R0001\nWhereas: (1) it is so.\nArticle 1 one.\n"
        "Article 2 two.\nDone at Brussels."
    )
    assert corpus.report.unknown_labels == {"9999": 1}


def test_load_eurlex57k_missing_key_and_bad_json_name_the_file(tmp_path: Path) -> None:
    for split in SPLITS:
        (tmp_path / split).mkdir()
    doc = eurlex_doc("1", ["x1"])
    del doc["main_body"]
    (tmp_path / "train" / "1.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"1\.json: missing key 'main_body'"):
        load_eurlex57k(tmp_path, small())
    (tmp_path / "train" / "1.json").write_text('{"header": "x",\n "concepts": [}\n')
    with pytest.raises(InputError, match=r"1\.json:2: invalid JSON"):
        load_eurlex57k(tmp_path, small())


def test_load_eurlex57k_missing_split_directory(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(InputError, match="missing the dev/ directory"):
        load_eurlex57k(tmp_path, small())


def test_load_jsonl_per_split_files(tmp_path: Path) -> None:
    paths = {
        s: write_jsonl(tmp_path / f"{s}.jsonl", [{"id": f"{s}-1", "text": s, "labels": ["x1"]}])
        for s in SPLITS
    }
    corpus = load_jsonl(paths, small())
    assert [d.id for d in corpus.splits["dev"]] == ["dev-1"]
    assert load_jsonl(tmp_path, small()).fingerprint() == corpus.fingerprint()  # directory


def test_load_jsonl_hugging_face_eurlex_layout_carves_dev(tmp_path: Path) -> None:
    records = [
        {
            "celex_id": f"3201{i:04d}",
            "title": "t",
            "text": f"law {i}",
            "eurovoc_concepts": ["x1", "x3"],
        }
        for i in range(60)
    ]
    paths = {
        "train": write_jsonl(tmp_path / "train.jsonl", records[:50]),
        "test": write_jsonl(tmp_path / "test.jsonl", records[50:]),
    }
    corpus = load_jsonl(paths, small(), labels_field="eurovoc_concepts", id_field="celex_id")
    sizes = {s: len(v) for s, v in corpus.splits.items()}
    assert sizes["test"] == 10 and sizes["train"] + sizes["dev"] == 50 and sizes["dev"] >= 1
    assert corpus.splits["test"][0].id == "32010050"
    assert (
        load_jsonl(
            paths, small(), labels_field="eurovoc_concepts", id_field="celex_id"
        ).fingerprint()
        == corpus.fingerprint()
    )


def test_load_jsonl_single_file_is_split_by_id_hash(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "all.jsonl", [{"text": f"doc {i}", "labels": ["x2"]} for i in range(100)]
    )
    corpus = load_jsonl(path, small())
    sizes = [len(corpus.splits[s]) for s in SPLITS]
    assert sum(sizes) == 100 and sizes[0] > sizes[1] > 0 and sizes[2] > 0
    assert corpus.splits["train"][0].id.startswith("all:")  # no id field: file stem + line


def test_load_jsonl_bad_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "1", "text": "a", "labels": ["x1"]}\n\n{"id": "2", "text": \n')
    with pytest.raises(InputError, match=r"train\.jsonl:3: invalid JSON"):
        load_jsonl({"train": path, "test": path}, small())


def test_load_jsonl_missing_text_field_names_the_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "train.jsonl",
        [{"id": "1", "text": "a", "labels": []}, {"id": "2", "body": "b", "labels": []}],
    )
    with pytest.raises(InputError, match=r"train\.jsonl:2: missing text field 'text'"):
        load_jsonl({"train": path, "test": path}, small())


def test_load_jsonl_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"absent\.jsonl: cannot read"):
        load_jsonl(tmp_path / "absent.jsonl", small())
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match=r"binary\.jsonl:1: invalid UTF-8 \(byte 1 of"):
        load_jsonl(binary, small())


def test_load_jsonl_needs_train_and_test(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "dev.jsonl", [{"id": "1", "text": "a", "labels": ["x1"]}])
    with pytest.raises(InputError, match="need train and test"):
        load_jsonl({"dev": path}, small())


def test_load_csv_splits_the_label_cell(tmp_path: Path) -> None:
    for split in SPLITS:
        (tmp_path / f"{split}.csv").write_text(
            f'id,text,labels\n{split}1,"a, quoted text",x1; x4\n{split}2,plain,zz\n'
        )
    corpus = load_csv(tmp_path, small())
    assert corpus.splits["train"][0] == Document(
        "train1", "a, quoted text", ("D1", "T1", "x1", "x4")
    )
    assert corpus.report.unknown_labels == {"zz": 3}
    assert corpus.report.unlabelled_docs == {"train": 1, "dev": 1, "test": 1}


def test_load_csv_other_columns_and_separator_without_ids(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("body,codes\nhello,x1|x3\n")
    dev, test = tmp_path / "d.csv", tmp_path / "t.csv"
    dev.write_text("body,codes\nhey,x2\n")
    test.write_text("body,codes\nhi,x4\n")
    corpus = load_csv(
        {"train": train, "dev": dev, "test": test},
        small(),
        text_field="body",
        labels_field="codes",
        label_separator="|",
    )
    assert corpus.splits["train"][0].id == "train:2"  # no id column: file stem + line
    assert corpus.splits["dev"][0].labels == ("D1", "D2", "T2", "T3", "x2")


def test_load_csv_without_the_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text("id,body\n1,hello\n")
    with pytest.raises(InputError, match=r"train\.csv: missing column\(s\) \['text', 'labels'\]"):
        load_csv({"train": path, "test": path}, small())


def test_load_csv_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.csv: cannot read"):
        load_csv(tmp_path / "nope.csv", small())


NOTES = """ROW_ID,SUBJECT_ID,HADM_ID,CHARTDATE,CHARTTIME,STORETIME,CATEGORY,DESCRIPTION,\
CGID,ISERROR,TEXT
1,10,{a},2150-01-01,,,Discharge summary,Report,,,"Admission Date: [**2150-1-1**]
chest pain"
2,10,{a},2150-01-02,,,Radiology,CHEST,,,"ignored radiology"
3,10,{a},2150-01-03,,,Discharge summary,Addendum,,,addendum text
4,11,{b},2151-01-01,,,Discharge summary,Report,,,diabetic patient
5,12,,2152-01-01,,,Discharge summary,Report,,,no admission id
6,13,{c},2152-01-01,,,Discharge summary,Report,,,cholera case
7,14,{d},2152-01-01,,,Discharge summary,Report,,,uncoded admission
"""
DIAGNOSES = """ROW_ID,SUBJECT_ID,HADM_ID,SEQ_NUM,ICD9_CODE
1,10,{a},1,41401
2,10,{a},2,250.00
3,11,{b},1,25000
4,11,{b},2,XYZ12
5,13,{c},1,0010
6,14,{d},1,
"""


def test_load_mimic_joins_discharge_summaries_with_codes(tmp_path: Path) -> None:
    ids = {"a": "100001", "b": "100002", "c": "100003", "d": "100004"}
    (tmp_path / "NOTEEVENTS.csv").write_text(NOTES.format(**ids))
    (tmp_path / "DIAGNOSES_ICD.csv").write_text(DIAGNOSES.format(**ids))
    corpus = load_mimic(
        tmp_path / "NOTEEVENTS.csv",
        tmp_path / "DIAGNOSES_ICD.csv",
        icd9_hierarchy(),
        split_fractions=(1, 1, 1),
    )
    docs = {d.id: d for split in SPLITS for d in corpus.splits[split]}
    assert set(docs) == {"100001", "100002", "100003"}
    assert docs["100001"].text == ("Admission Date: [**2150-1-1**]\nchest pain\n\naddendum text")
    assert {"41401", "25000", "390-459", "240-279"} <= set(docs["100001"].labels)
    assert "25000" in docs["100002"].labels
    assert corpus.report.unknown_labels == {"XYZ12": 1}
    assert sum(corpus.report.unlabelled_docs.values()) == 1  # 100004 has no code
    again = load_mimic(
        tmp_path / "NOTEEVENTS.csv",
        tmp_path / "DIAGNOSES_ICD.csv",
        icd9_hierarchy(),
        split_fractions=(1, 1, 1),
    )
    assert again.fingerprint() == corpus.fingerprint()


def test_load_mimic_without_the_columns(tmp_path: Path) -> None:
    (tmp_path / "NOTEEVENTS.csv").write_text("ROW_ID,HADM_ID,TEXT\n1,2,x\n")
    (tmp_path / "DIAGNOSES_ICD.csv").write_text("HADM_ID,ICD9_CODE\n2,0010\n")
    with pytest.raises(InputError, match=r"NOTEEVENTS\.csv: missing column\(s\) \['CATEGORY'\]"):
        load_mimic(tmp_path / "NOTEEVENTS.csv", tmp_path / "DIAGNOSES_ICD.csv", icd9_hierarchy())


MIMIC_IV = Path(__file__).parents[1] / "fixtures" / "mimic_iv"
# A seed that puts the fixtures' three ICD-10 patients, and their three ICD-9 ones, into three
# different splits (every split needs a labelled document)
MIMIC_IV_SEED = 51


def _mimic_iv(root: Path = MIMIC_IV, icd_version: int = 10) -> Corpus:
    return load_mimic_iv(root, root, icd_version=icd_version, seed=MIMIC_IV_SEED,
                         split_fractions=(1, 1, 1))


def _docs(corpus: Corpus) -> dict[str, Document]:
    return {d.id: d for split in SPLITS for d in corpus.splits[split]}


def test_load_mimic_iv_joins_discharge_notes_with_icd10_codes_on_hadm_id() -> None:
    corpus = _mimic_iv()
    docs = _docs(corpus)
    # the three admissions coded in ICD-9, the note without hadm_id and hadm 20000099 (codes,
    # no note) make no document
    assert set(docs) == {"20000011", "20000012", "20000021", "20000031"}
    assert corpus.hierarchy.name == "icd10"
    assert docs["20000011"].text.startswith("Brief Hospital Course: diuresed, \"dry weight\"")
    assert docs["20000011"].text.endswith("with heart failure")  # note_seq 11, then 12
    assert {"I11.0", "I11", "I10-I1A", "9", "I50.30", "I50.3", "I50"} <= set(
        docs["20000011"].labels
    )
    assert {"E11.9", "Z87.891", "4", "21"} <= set(docs["20000021"].labels)
    assert corpus.report.unknown_labels == {"XX9.99": 1}
    assert sum(corpus.report.unlabelled_docs.values()) == 3  # the ICD-9 admissions
    assert corpus.generator is not None and corpus.generator["icd_version"] == 10


def test_load_mimic_iv_icd9_keeps_version_9_codes_on_the_icd9_hierarchy() -> None:
    corpus = _mimic_iv(icd_version=9)
    docs = _docs(corpus)
    assert set(docs) == {"20000041", "20000061", "20000071"}
    assert corpus.hierarchy.name == "icd9"
    assert {"4280", "428", "25000", "250"} <= set(docs["20000041"].labels)
    assert not any(label.startswith("I") for d in docs.values() for label in d.labels)


def test_load_mimic_iv_keeps_a_patients_admissions_in_one_split() -> None:
    corpus = _mimic_iv()
    split_of = {d.id: split for split in SPLITS for d in corpus.splits[split]}
    assert split_of["20000011"] == split_of["20000012"]


def test_load_mimic_iv_reads_gzipped_files_in_the_release_layout(tmp_path: Path) -> None:
    for folder, stem in (("note", "discharge"), ("hosp", "diagnoses_icd")):
        (tmp_path / folder).mkdir()
        data = (MIMIC_IV / folder / f"{stem}.csv").read_bytes()
        (tmp_path / folder / f"{stem}.csv.gz").write_bytes(gzip.compress(data))
    assert _mimic_iv(tmp_path).fingerprint() == _mimic_iv().fingerprint()


def test_load_mimic_iv_takes_the_files_themselves() -> None:
    corpus = load_mimic_iv(MIMIC_IV / "note" / "discharge.csv",
                           MIMIC_IV / "hosp" / "diagnoses_icd.csv", seed=MIMIC_IV_SEED,
                           split_fractions=(1, 1, 1))
    assert corpus.fingerprint() == _mimic_iv().fingerprint()


def test_load_mimic_iv_names_a_missing_file_or_column(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no note/discharge\.csv or note/discharge\.csv\.gz"):
        load_mimic_iv(tmp_path, MIMIC_IV)
    (tmp_path / "discharge.csv").write_text("note_id,subject_id,hadm_id,text\n1,2,3,x\n")
    with pytest.raises(InputError, match=r"discharge\.csv: missing column\(s\) \['note_seq'\]"):
        load_mimic_iv(tmp_path, MIMIC_IV)
    with pytest.raises(InputError, match="icd_version: must be 9 or 10"):
        load_mimic_iv(MIMIC_IV, MIMIC_IV, icd_version=11)


def test_write_and_load_corpus_dir_round_trip(tmp_path: Path) -> None:
    corpus = finalize(
        three_splits(), small().truncate(1, 3), synthetic=True, generator={"name": "test"}
    )
    write_corpus(corpus, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "corpus.json",
        "dev.jsonl",
        "hierarchy.json",
        "test.jsonl",
        "train.jsonl",
    ]
    meta = json.loads((tmp_path / "out" / "corpus.json").read_text())
    assert meta["synthetic"] is True and meta["stats"]["documents"]["train"] == 2
    again = load_corpus_dir(tmp_path / "out")
    assert isinstance(again, Corpus)
    assert again.fingerprint() == corpus.fingerprint()
    assert (
        again.splits == corpus.splits and again.synthetic and again.generator == {"name": "test"}
    )
    write_corpus(again, tmp_path / "out")  # replacing a corpus directory is fine


def test_write_corpus_refuses_to_replace_other_directories(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "precious.txt").write_text("keep")
    with pytest.raises(InputError, match="not a corpus directory"):
        write_corpus(finalize(three_splits(), small()), tmp_path / "home")
    assert (tmp_path / "home" / "precious.txt").read_text() == "keep"


def test_load_corpus_dir_without_meta_is_real_and_needs_hierarchy(tmp_path: Path) -> None:
    write_corpus(finalize(three_splits(), small(), synthetic=True), tmp_path / "c")
    (tmp_path / "c" / "corpus.json").unlink()
    assert load_corpus_dir(tmp_path / "c").synthetic is False
    (tmp_path / "c" / "hierarchy.json").unlink()
    with pytest.raises(InputError, match=r"hierarchy\.json: cannot read"):
        load_corpus_dir(tmp_path / "c")


def test_write_corpus_replaces_only_the_files_it_wrote(tmp_path: Path) -> None:
    out = tmp_path / "c"
    write_corpus(finalize(three_splits(), small(), synthetic=True), out)
    (out / "README.md").write_text("how I made it")
    (out / ".hiersearch-cache").mkdir()
    (out / ".hiersearch-cache" / "keep").write_text("cache")
    smaller = finalize({**three_splits(), "train": [("t9", "vote", ["x1"])]}, small())
    write_corpus(smaller, out)
    assert (out / "README.md").read_text() == "how I made it"
    assert (out / ".hiersearch-cache" / "keep").read_text() == "cache"
    assert [d.id for d in load_corpus_dir(out).splits["train"]] == ["t9"]


def test_write_corpus_refuses_a_corpus_json_it_did_not_write(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "corpus.json").write_text('{"synthetic": false}')
    (tmp_path / "c" / "train.jsonl").write_text("my data\n")
    with pytest.raises(InputError, match="not a corpus directory written by hiersearch"):
        write_corpus(finalize(three_splits(), small()), tmp_path / "c")
    assert (tmp_path / "c" / "train.jsonl").read_text() == "my data\n"


def test_write_corpus_accepts_a_corpus_written_before_manifests(tmp_path: Path) -> None:
    out = tmp_path / "c"
    write_corpus(finalize(three_splits(), small()), out)
    meta = json.loads((out / "corpus.json").read_text())
    del meta["files"]  # what an earlier hiersearch wrote: a load report, no file list
    (out / "corpus.json").write_text(json.dumps(meta))
    write_corpus(finalize(three_splits(), small()), out)
    assert "files" in json.loads((out / "corpus.json").read_text())


def test_the_manifest_tells_a_torn_corpus_from_a_whole_one(tmp_path: Path) -> None:
    out = tmp_path / "c"
    write_corpus(finalize(three_splits(), small()), out)
    assert manifest_matches(out)
    (out / "dev.jsonl").write_text("")  # a rename that never happened
    assert not manifest_matches(out)
    assert not manifest_matches(tmp_path / "absent")


def test_written_corpus_files_honour_the_umask(tmp_path: Path) -> None:
    import os
    import stat

    old = os.umask(0o022)
    try:
        write_corpus(finalize(three_splits(), small()), tmp_path / "c")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "c").iterdir()}
    assert set(modes.values()) == {0o644}
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o755


def test_the_load_report_names_dropped_documents(tmp_path: Path) -> None:
    raw = three_splits(dev=[("d7", "x", ["zz"]), ("d8", "y", ["qq"])])
    report = finalize(raw, small()).report
    assert report.dropped_examples == {"dev": ["d7", "d8"]}
    assert "e.g. d7, d8" in report.summary()
    cut = finalize(raw, small()).truncate(1, 2).report  # the examples survive truncation
    assert cut.dropped_examples["dev"] == ["d7", "d8"]


def test_finalize_drops_empty_and_whitespace_texts_in_every_split() -> None:
    raw = three_splits(
        train=[("t3", "", ["x1"]), ("t4", " \n\t", ["x2"])],
        dev=[("d2", "   ", ["x3"])],
        test=[("s2", "\u3000", ["x4"])],  # an ideographic space: whitespace too
    )
    corpus = finalize(raw, small())
    kept = {s: [d.id for d in docs] for s, docs in corpus.splits.items()}
    assert kept == {"train": ["t1", "t2"], "dev": ["d1"], "test": ["s1"]}
    assert corpus.report.empty_docs == {"train": 2, "dev": 1, "test": 1}
    assert corpus.report.unlabelled_docs == {"train": 0, "dev": 0, "test": 0}


def test_the_load_report_counts_empty_texts_with_their_first_ids() -> None:
    raw = three_splits(train=[(f"e{i}", " ", ["x1"]) for i in range(5)])
    report = finalize(raw, small()).report
    assert report.empty_examples == {"train": ["e0", "e1", "e2"]}
    assert report.to_json()["empty_docs"]["train"] == 5
    assert ("dropped 5 documents whose text is empty or only whitespace (train 5); "
            "e.g. e0, e1, e2") in report.summary()


def test_empty_texts_stay_counted_after_truncation() -> None:
    cut = finalize(three_splits(dev=[("d9", "", ["x3"])]), small()).truncate(1, 2).report
    assert cut.empty_docs["dev"] == 1 and cut.empty_examples == {"dev": ["d9"]}


def test_a_split_left_empty_by_empty_texts_is_refused_naming_why() -> None:
    raw = three_splits()
    raw["test"] = [("s1", "  ", ["x4"])]
    with pytest.raises(InputError, match=r"src: the test split has no labelled documents "
                       r"\(dropped: 1 with an empty text\)"):
        finalize(raw, small(), where="src")


def test_a_corpus_of_empty_texts_is_refused() -> None:
    raw = {s: [(f"{s}1", "", ["x1"])] for s in SPLITS}
    with pytest.raises(InputError, match="every document's text is empty.*train1, dev1, test1"):
        finalize(raw, small())
