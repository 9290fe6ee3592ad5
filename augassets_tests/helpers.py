"""Shared by the test modules of the Dagster layer: the `smoke` profile and its definitions, and a profile
reading an ImageFolder beside them."""

from dataclasses import replace

from augassets.build import build_defs
from augassets.profiles import IMAGE_FOLDER, SplitSpec, get_profile

SMOKE = get_profile("smoke")
defs = build_defs(SMOKE)


def _folder_profile(root):
    dataset = replace(IMAGE_FOLDER, default_root=str(root), root_env="AUGASSETS_TEST_UNSET_DIR")
    return replace(SMOKE, dataset=dataset, split=SplitSpec(train_fraction=0.2, seed=4))
