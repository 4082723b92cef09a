from pathlib import Path

import pytest

from hardneg.data import wordnet as wn

# three synsets: 100 (entity) is the hypernym of 200 and 300 (siblings); 400 is a hyponym of 200
DATA = """  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00000100 03 n 01 entity 0 002 ~ 00000200 n 0000 ~ 00000300 n 0000 | that which is perceived to exist
00000200 03 n 02 dog 0 domestic_dog 0 002 @ 00000100 n 0000 ~ 00000400 n 0000 | \
a member of the genus Canis; "the dog barked all night"; "dogs are loyal"
00000300 03 n 01 cat 0 001 @ 00000100 n 0000 | feline mammal; "the cat sat" - Anon
00000400 03 n 01 puppy 0 001 @i 00000200 n 0000 | a young dog
"""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "data.noun").write_text(DATA)
    return tmp_path


def test_split_gloss_separates_definition_and_examples():
    d, ex = wn.split_gloss('a member of the genus Canis; "the dog barked all night"; "dogs are loyal"')
    assert d == "a member of the genus Canis"
    assert ex == ("the dog barked all night", "dogs are loyal")
    d, ex = wn.split_gloss('feline mammal; "the cat sat" - Anon')
    assert (d, ex) == ("feline mammal", ("the cat sat",))


def test_parse_synthetic_file(data_dir):
    syn = {s.key: s for s in wn.load_synsets("noun", data_dir)}
    assert set(syn) == {"noun:00000100", "noun:00000200", "noun:00000300", "noun:00000400"}
    dog = syn["noun:00000200"]
    assert dog.lemmas == ("dog", "domestic dog")
    assert dog.hypernyms == ("noun:00000100",)
    assert syn["noun:00000400"].hypernyms == ("noun:00000200",)  # @i counts as a hypernym
    assert dog.examples == ("the dog barked all night", "dogs are loyal")
    pairs = wn.build_pairs(syn.values())
    assert [(p["query"], p["positive"]) for p in pairs] == [
        ("the dog barked all night", "a member of the genus Canis"),
        ("dogs are loyal", "a member of the genus Canis"),
        ("the cat sat", "feline mammal"),
    ]
    lemma_pairs = wn.build_pairs(syn.values(), query="lemma")
    assert ("domestic dog", "a member of the genus Canis") in [(p["query"], p["positive"]) for p in lemma_pairs]
    assert wn.siblings(list(syn.values()))["noun:00000200"] == ["noun:00000300"]


def test_false_negative_labels_mark_hypernyms_and_hyponyms_not_siblings(data_dir):
    syn = {s.key: s for s in wn.load_synsets("noun", data_dir)}
    q = set(wn.fn_labels_for_query(syn["noun:00000200"]))  # dog

    def inter(key):
        return bool(q & set(wn.fn_labels_for_doc(syn[key])))

    assert inter("noun:00000200")  # own definition
    assert inter("noun:00000100")  # hypernym
    assert inter("noun:00000400")  # hyponym
    assert not inter("noun:00000300")  # sibling: a true hard negative


def test_split_is_deterministic_and_by_synset():
    keys = [f"noun:{i:08d}" for i in range(5000)]
    a = [wn.split_of(k) for k in keys]
    assert a == [wn.split_of(k) for k in keys]
    frac = {s: a.count(s) / len(a) for s in wn.SPLITS}
    assert abs(frac["train"] - 0.8) < 0.03 and abs(frac["dev"] - 0.1) < 0.02
    with pytest.raises(ValueError, match="fractions"):
        wn.split_of("noun:1", (0.5, 0.5, 0.5))


def test_missing_files_and_bad_args(tmp_path):
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        wn.load_synsets("noun", tmp_path)
    with pytest.raises(ValueError, match="pos must be one of"):
        wn.load_synsets("pronoun", tmp_path)
    with pytest.raises(ValueError, match="query must be"):
        wn.build_pairs([], query="gloss")
    (tmp_path / "data.noun").write_text("00000100 03 n 01 entity 0 000 no gloss separator\n")
    with pytest.raises(ValueError, match="line 1"):
        wn.load_synsets("noun", tmp_path)


@pytest.mark.skipif(not (wn.DEFAULT_DATA_DIR / "data.noun").exists(), reason="wordnet-base not installed")
def test_real_wordnet_noun_file():
    syn = {s.key: s for s in wn.load_synsets("noun")}
    kill = syn["noun:00217593"]
    assert kill.lemmas == ("kill",)
    assert kill.definition == "the destruction of an enemy plane or ship or tank or missile"
    assert kill.examples == ("the pilot reported two kills during the mission",)
    assert kill.hypernyms == ("noun:00217014",)
    corpus, labels = wn.build_corpus(syn.values())
    assert len(corpus) == len(set(corpus)) == len(labels)
    assert len(corpus) > 80000


def test_ambiguity_labels_mark_definitions_of_other_words_in_the_example(data_dir):
    # "the dog barked ... cat": the cat definition answers the sentence too; the dog's own other senses do not
    syn = {s.key: s for s in wn.load_synsets("noun", data_dir)}
    dog, cat, puppy = syn["noun:00000200"], syn["noun:00000300"], syn["noun:00000400"]
    assert wn.query_lemma_keys("The dogs chased two cats") >= {"dog", "cat", "chase", "chased", "two cat"}
    assert "the" not in wn.query_lemma_keys("the cat")  # function words are not lemma keys
    q = set(wn.ambiguity_labels_for_query(dog, "the dogs chased the cat and a puppy"))
    assert q == {f"w:{k}" for k in wn.query_lemma_keys("the dogs chased the cat and a puppy")} - {"w:dog"}

    def amb(doc):
        return bool(q & set(wn.ambiguity_labels_for_doc(doc)))

    assert amb(cat) and amb(puppy) and not amb(dog)  # own lemma excluded: other senses of "dog" stay negatives
    rows = wn.build_pairs(syn.values(), ambiguous=True)
    corpus, labels = wn.build_corpus(syn.values(), ambiguous=True)
    plain = wn.build_pairs(syn.values())
    assert [r["query"] for r in rows] == [r["query"] for r in plain]
    r = next(r for r in rows if r["query"] == "the dog barked all night")
    assert set(plain[0]["labels"]) < set(r["labels"]) and "w:dog" not in r["labels"] and "w:night" in r["labels"]
    assert "w:cat" in labels[corpus.index("feline mammal")]


def test_wordnet_export_cli_writes_splits_and_ambiguity_labels(data_dir, tmp_path):
    import json

    from reproduce.cli import main

    out = tmp_path / "export"
    with pytest.raises(SystemExit) as e:
        main(["wordnet-export", "--out", str(out), "--data-dir", str(data_dir), "--ambiguous"])
    assert e.value.code in (0, None)
    rows = [json.loads(x) for sp in wn.SPLITS for x in (out / f"{sp}.jsonl").read_text().splitlines()]
    assert sorted(r["query"] for r in rows) == sorted(
        ["the dog barked all night", "dogs are loyal", "the cat sat"])
    dog_row = next(r for r in rows if r["query"] == "the dog barked all night")
    assert "w:night" in dog_row["labels"] and "w:dog" not in dog_row["labels"]
    corpus = {d["text"]: d["labels"] for d in map(json.loads, (out / "corpus.jsonl").read_text().splitlines())}
    assert set(corpus["a member of the genus Canis"]) == {"s:noun:00000200", "c:noun:00000100", "w:dog",
                                                          "w:domestic dog"}
