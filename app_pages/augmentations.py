"""Augmentations page: build a chain from the registry, set its parameters, and see what it does."""

import streamlit as st

from adcore import viz
from adcore.augment import AUGMENTATIONS, get_augmentation
from app_pages import common


N_SAMPLES = 8

st.title("Augmentations")
st.markdown(
    "Augmentations change the training photos at random. Depending on the method they either add "
    "harmless variation (so that normal changes of pose or light are not flagged) or paste "
    "synthetic defects to learn from. The chain you build here is the one the **Train** page starts "
    "from, for every method that uses augmentations."
)

with st.expander("Available augmentations", expanded=False):
    for name in AUGMENTATIONS.names():
        st.markdown(f"- **{common.label_of(name)}**: {get_augmentation(name).help}")

image_set = common.current_image_set()
normal_train = image_set.normal_train

settings, preview = st.columns([1, 2], gap="large")
with settings:
    chain = common.augmentation_editor("augment", st.session_state["augmentations"])
    common.page_chain_changed(chain)
    seed = common.remembered(
        st.number_input,
        "Seed",
        min_value=0,
        max_value=2**31 - 1,
        step=1,
        key="augment.seed",
        value=0,
        help="The same seed gives the same images and the same augmentations. Step it for new samples.",
    )

with preview:
    st.subheader("Preview")
    if not normal_train:
        st.info("The current image set has no normal training images to preview: load some on the Data page.")
    else:
        picked = [normal_train[i] for i in viz.pick_indices(len(normal_train), N_SAMPLES, int(seed))]
        if not chain:
            st.caption("No augmentation chosen: training would see these images unchanged.")
        else:
            st.caption(
                "Each pair: a training image and the same image after the chain. The pasted patch "
                "(CutPaste, CutPaste scar) is outlined in red; when the chain pastes more than once, the "
                "earlier pastes are framed in yellow."
            )
        try:
            samples = viz.augmentation_samples(common.images_of(picked), chain, int(seed), display_size=256)
        except ValueError as exc:
            st.error(f"These settings do not work: {exc}")
        else:
            common.show_samples(samples, columns=2)
