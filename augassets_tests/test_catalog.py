from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from augassets.core.catalog import build_catalog, caltech_name, class_entries, name_without_whitespace
from augassets.core.wordnet import WordNet, WordNetError
from augassets.profiles import CALTECH256, FASHION_MNIST, IMAGE_FOLDER, IMAGENET


def test_fashion_mnist_catalog_names_come_from_wordnet():
    catalog = build_catalog(FASHION_MNIST)
    assert catalog.height == 10
    assert catalog["label"].to_list() == list(range(10))
    jersey = catalog.row(by_predicate=pl.col("wnid") == "n03595614", named=True)
    assert jersey["lemmas"] == ["jersey", "T-shirt", "tee shirt"]
    assert jersey["name"] == "jersey, T-shirt, tee shirt"
    assert jersey["name_nows"] == "jersey,T-shirt,teeshirt"
    assert jersey["hypernym"] == "shirt"
    assert jersey["definition"] == "a close-fitting pullover shirt"
    # The packaged table's lemmas agree with WordNet 3.0 for every class.
    table = {
        line.split("\t")[2]: line.split("\t")[3]
        for line in (Path(__file__).parents[1] / "augassets/data/fashion_mnist_wordnet.tsv").read_text().splitlines()
        if not line.startswith("#")
    }
    assert dict(zip(catalog["wnid"], catalog["name"])) == table


def test_imagenet_catalog_materializes_without_images():
    catalog = build_catalog(IMAGENET)
    assert catalog.height == 1000
    shark = catalog.row(by_predicate=pl.col("wnid") == "n01484850", named=True)
    assert shark["name"] == "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"
    assert shark["name_nows"] == "greatwhiteshark,whiteshark,man-eater,man-eatingshark,Carcharodoncarcharias"
    assert all(catalog["hypernym"].str.len_chars() > 0)


def test_caltech256_keys_and_names():
    entries = class_entries(CALTECH256)
    assert len(entries) == 256  # the clutter class is not an object class
    assert entries[0].key == "c001" and entries[0].folder == "001.ak47"
    assert caltech_name("004.baseball-bat") == "baseball bat"
    assert caltech_name("232.t-shirt") == "t shirt"
    assert all(e.key.isalnum() and e.key.islower() for e in entries)


def test_name_without_whitespace_handles_unicode_whitespace():
    assert name_without_whitespace("tiger shark,\u00a0Galeocerdo  cuvieri") == "tigershark,Galeocerdocuvieri"


def test_class_folders_that_are_not_wordnet_ids_are_skipped_with_their_reason(tmp_path):
    for folder in ("n03595614", "n99999999", "cats"):
        (tmp_path / "train" / folder).mkdir(parents=True)
    dataset = replace(IMAGE_FOLDER, default_root=str(tmp_path), root_env="AUGASSETS_TEST_UNSET_DIR")
    skipped = []
    catalog = build_catalog(dataset, skipped=skipped)
    assert catalog["wnid"].to_list() == ["n03595614"]
    assert catalog["source_label"].to_list() == [3595614], "a folder class is numbered by its WordNet offset"
    reasons = {item.folder: item.reason for item in skipped}
    assert set(reasons) == {"n99999999", "cats"}
    assert reasons["n99999999"].startswith("unknown wnid 'n99999999'") and reasons["n99999999"].endswith(
        "WordNet 3.0 noun ids"
    )
    assert reasons["cats"].startswith("'cats' is not a WordNet noun id")


def test_a_folder_dataset_without_any_wordnet_class_is_a_clear_error(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    dataset = replace(IMAGE_FOLDER, default_root=str(tmp_path), root_env="AUGASSETS_TEST_UNSET_DIR")
    with pytest.raises(
        ValueError, match="no usable class in class list 'folders' \\(1 folders skipped: 'cats': 'cats' is not"
    ):
        build_catalog(dataset)


def test_missing_class_root_names_the_setting(tmp_path):
    dataset = replace(IMAGE_FOLDER, default_root=str(tmp_path / "absent"), root_env="AUGASSETS_TEST_UNSET_DIR")
    with pytest.raises(FileNotFoundError, match="AUGASSETS_TEST_UNSET_DIR"):
        build_catalog(dataset)


def test_wordnet_parser_reads_quotes_and_unicode(tmp_path):
    """A hand-written WNDB file with a lemma holding an apostrophe and a non-ASCII letter."""
    line_a = '00000000 03 n 02 café_au_lait 0 o\'clock_coat 0 001 @ 00000100 n 0000 | a coat, "quoted" gloss  \n'
    offset_b = len(line_a.encode())
    line_a = line_a.replace("00000100", f"{offset_b:08d}")
    line_b = f"{offset_b:08d} 03 n 01 garment 0 000 | an article of clothing  \n"
    (tmp_path / "data.noun").write_bytes((line_a + line_b).encode())
    wordnet = WordNet(tmp_path)
    synset = wordnet.synset("n00000000")
    assert synset.lemmas == ("café au lait", "o'clock coat")
    assert synset.definition == 'a coat, "quoted" gloss'
    assert wordnet.first_hypernym_name("n00000000") == "garment"
    with pytest.raises(WordNetError, match="unknown wnid 'n00000005'"):
        wordnet.synset("n00000005")


def test_missing_wordnet_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("AUGASSETS_WORDNET_DIR", str(tmp_path))
    with pytest.raises(WordNetError, match="apt-get install wordnet-base"):
        WordNet()
