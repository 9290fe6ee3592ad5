"""Study files: every built-in profile written as one and read back to the same settings (code
versions included), and a bad file named line by line before anything runs."""

import subprocess
import sys
from pathlib import Path

import pytest

from augassets.profiles import PROFILES, STUDY_ENV, get_profile, load_study, study_toml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(PROFILES))
def test_every_built_in_profile_is_a_study_file(name, tmp_path):
    path = tmp_path / f"{name}.toml"
    path.write_text(study_toml(PROFILES[name]))
    loaded = load_study(path)
    assert loaded == PROFILES[name]
    assert repr(loaded) == repr(PROFILES[name]), "the same reprs, so the same code versions: nothing goes stale"


def test_a_study_file_sets_what_it_names_on_its_base_and_the_environment_still_overrides(tmp_path, monkeypatch):
    study = load_study(REPO / "examples" / "study.toml")
    mini = PROFILES["mini"]
    assert study.name == "retrieval_variants" and study.classifier.replicates == 10
    assert study.methods == ("real_p", "real_2p", "retrieval", "image_retrieval", "mmr_retrieval", "retrieval_img2img")
    assert study.scaling.ratios == (2.0, 4.0) and study.split == mini.split and study.world == mini.world
    (tmp_path / "s.toml").write_text('base = "smoke"\nhome = "state"\ndevice = "cpu"\n[classifier]\nreplicates = 3\n')
    monkeypatch.setenv(STUDY_ENV, str(tmp_path / "s.toml"))
    monkeypatch.setenv("AUGASSETS_METHODS", "real_p,retrieval")
    monkeypatch.delenv("AUGASSETS_HOME")
    profile = get_profile()
    assert profile.name == "s" and profile.classifier.replicates == 3 and profile.methods == ("real_p", "retrieval")
    assert profile.home == tmp_path / "state" / "s" and profile.compute_device == "cpu"
    monkeypatch.setenv("AUGASSETS_HOME", str(tmp_path / "elsewhere"))
    assert get_profile().home == tmp_path / "elsewhere" / "s", "the environment overrides the file"


BAD = """base = "minii"
name = "a b"
methods = ["real_p", "nope"]
[classifier]
epochs = 3
max_epochs = "ten"
arch = "vgg"
crop_scale = [0.5]
[scaling]
short_classes = "drop"
methods = ["retrieval", "nope2"]
"""


def test_a_bad_study_file_is_one_line_per_problem_and_exit_status_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BAD)
    result = subprocess.run(
        [str(Path(sys.executable).with_name("augassets")), "benchmark", "--study", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    problems = [
        "base = 'minii': one of smoke, mini",
        "name = 'a b': letters, digits, _ and -",
        "methods: unknown method 'nope'",
        "classifier.epochs: unknown field (classifier has: arch, image_size",
        "classifier.max_epochs = 'ten': expected a whole number",
        "classifier.arch = 'vgg': one of resnet_small, resnet50",
        "classifier.crop_scale = [0.5]: expected a list of 2 values (a number, a number)",
        "scaling.short_classes = 'drop': one of exclude, train_with_what_there_is",
        "scaling.methods: unknown method 'nope2'",
    ]
    for problem in problems:
        assert sum(f"augassets: {path}: {problem}" in line for line in lines) == 1, (problem, lines)
    assert all(line.startswith(f"augassets: {path}: ") for line in lines), lines
    assert "Traceback" not in result.stderr


def test_a_setting_of_the_wrong_shape_is_one_line_too(tmp_path):
    path = tmp_path / "shape.toml"
    path.write_text('base = "smoke"\nscaling = 3\nmethods = "real_p"\n')
    with pytest.raises(ValueError) as raised:
        load_study(path)
    assert str(raised.value).splitlines() == [  # in the file's order
        f"{path}: scaling: expected a table of ScalingSpec fields, got 3",
        f"{path}: methods = 'real_p': expected a list of strings",
    ]


def test_the_study_command_prints_a_profile_that_loads_back(tmp_path):
    result = subprocess.run(
        [str(Path(sys.executable).with_name("augassets")), "study", "smoke"], capture_output=True, text=True, check=True
    )
    (tmp_path / "smoke.toml").write_text(result.stdout)
    assert load_study(tmp_path / "smoke.toml") == PROFILES["smoke"]
