"""The method catalog: groups, "good for" lines and expected training times."""

from __future__ import annotations

import pytest

from adcore import catalog
from adcore.methods import DEFAULT_METHOD, METHODS


def test_every_registered_method_has_a_catalog_row_in_a_named_group():
    for name in METHODS.names():
        row = catalog.entry(name)
        assert row.group in catalog.GROUPS[:-1], f"{name} is not in the catalog (it would show under 'Other')"
        assert row.good_for and row.train_s and row.score_s


def test_the_recommended_method_comes_first_and_groups_keep_their_order():
    names = ["autoencoder", "patchcore", "cutpaste", "pretrained_gaussian"]
    groups = catalog.grouped(names, recommended="patchcore")
    assert groups == [
        ("Recommended", ["patchcore"]),
        ("Pretrained features", ["pretrained_gaussian"]),
        ("Self-supervised from scratch", ["cutpaste"]),
        ("Reconstruction", ["autoencoder"]),
    ]
    assert catalog.in_picker_order(names, recommended="autoencoder")[0] == "autoencoder"
    assert catalog.in_picker_order(METHODS.names())[0] == DEFAULT_METHOD


def test_the_self_configuring_method_is_recommended_even_before_it_exists():
    assert catalog.group_of("auto", recommended="patchcore") == "Recommended"
    assert catalog.grouped(["patchcore", "auto"], recommended="auto")[0] == ("Recommended", ["auto"])
    unknown = catalog.entry("not_a_method_yet")
    assert unknown.group == "Other" and unknown.train_s is None
    assert catalog.estimate_training_seconds("not_a_method_yet", 100) is None
    assert catalog.format_estimate(None) == "time not known yet"


def test_estimate_grows_with_images_epochs_and_image_size():
    def seconds(n: int, epochs: int, size: int) -> float:
        return catalog.estimate_training_seconds("autoencoder", n, params={"epochs": epochs, "image_size": size})

    base = seconds(100, 10, 64)
    assert seconds(200, 10, 64) == pytest.approx(2 * base)
    assert seconds(100, 20, 64) == pytest.approx(2 * base)
    assert seconds(100, 10, 128) == pytest.approx(4 * base)
    # Without params: the method's defaults (40 epochs at 128 px).
    rate = catalog.CATALOG["autoencoder"].train_s
    assert catalog.estimate_training_seconds("autoencoder", 50) == pytest.approx(40 * 50 * rate)
    # Scoring adds its own, per scored image.
    scored = catalog.estimate_training_seconds("autoencoder", 50, 30)
    assert scored == pytest.approx(40 * 50 * rate + 30 * catalog.CATALOG["autoencoder"].score_s)


def test_estimate_uses_the_rate_measured_by_earlier_runs_and_the_budget():
    def run(seconds, n_fit=50, epochs=10, size=128, **extra):
        return {"method": "autoencoder", "train_seconds": seconds, "data": {"n_fit": n_fit},
                "params": {"epochs": epochs, "image_size": size}, **extra}  # fmt: skip

    earlier = [run(100.0), run(300.0, stopped_by_budget=True), {**run(1.0), "method": "patchcore"}]
    assert catalog.measured_rate("autoencoder", earlier) == pytest.approx(100.0 / (10 * 50))
    # The same set again, 64 px instead of 128: a quarter of the measured time.
    again = catalog.estimate_training_seconds(
        "autoencoder", 50, params={"epochs": 10, "image_size": 64}, earlier_runs=earlier
    )
    assert again == pytest.approx(25.0)
    assert catalog.measured_rate("memae", earlier) is None
    capped = catalog.estimate_training_seconds(
        "autoencoder", 50, 10, params={"epochs": 10}, budget_s=30, earlier_runs=earlier
    )
    assert capped == pytest.approx(30 + 10 * catalog.CATALOG["autoencoder"].score_s)


@pytest.mark.parametrize(
    "seconds, text", [(3, "about 5 s"), (42, "about 40 s"), (150, "about 2 min"), (5400, "about 1.5 h")]
)
def test_format_estimate(seconds, text):
    assert catalog.format_estimate(seconds) == text


def test_the_methods_said_to_rebuild_images_are_the_autoencoder_family():
    from adcore.methods import get_method_class
    from adcore.methods.autoencoder import Autoencoder

    for name in METHODS.names():
        assert catalog.entry(name).reconstructs == issubclass(get_method_class(name), Autoencoder), name


def test_a_method_said_to_use_no_augmentations_has_none_by_default_and_says_so():
    from adcore.methods import get_method_class

    for name in METHODS.names():
        method = get_method_class(name)
        if not catalog.entry(name).uses_augmentations:
            assert method.default_augmentations == [], name
            assert method.augmentation_role.startswith("Not used"), name
