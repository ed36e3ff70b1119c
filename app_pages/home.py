"""Home page: what the tool does, and the four steps (data, train, threshold, share) with the state
of each for the current image set and one button to the next."""

import streamlit as st

from adcore import catalog, viz
from adcore.methods import DEFAULT_METHOD, get_method_class
from adcore.threshold import saved_threshold
from app_pages import common

image_set = common.current_image_set()
manager = common.job_manager()
on_set = common.runs_on_set(image_set)  # newest first
latest_id, latest = on_set[0] if on_set else (None, None)
if latest_id is not None and st.session_state.get("selected_run") not in {run_id for run_id, _ in on_set}:
    st.session_state["selected_run"] = latest_id  # the Threshold and Share steps open a run of this set
recommended = get_method_class(DEFAULT_METHOD)
n_scored = len(image_set.normal_train) + len(image_set.test)
estimate = catalog.estimate_training_seconds(
    DEFAULT_METHOD,
    len(image_set.normal_train),
    n_scored,
    budget_s=catalog.RECOMMENDED_BUDGET_S,
    earlier_runs=[config for _, config in common.run_configs(manager.runs_root)[0]],
)


def train_recommended() -> None:
    """Button callback: queue the recommended run on this set and watch it on the Train page."""
    job = manager.submit(catalog.recommended_spec(str(image_set.root)), image_set=image_set)
    st.session_state["train.job_id"] = job.id
    st.session_state["home.go_train"] = True


def step(column, number: int, title: str, state: str, done: bool) -> None:
    with column:
        icon = ":material/check_circle:" if done else ":material/radio_button_unchecked:"
        st.markdown(f"#### {number} · {title}")
        st.markdown(f"{icon} {state}")


st.title("Anomaly Inspector")
st.markdown(
    "Finds defects in photos of parts when all you have is photos of **good** parts: it learns what "
    "normal looks like and scores every new photo by how far it is from that, with a map of where. "
    "Four steps take you from your photos to a model and a report you can hand on."
)

columns = [c.container(border=True, height="stretch") for c in st.columns(4)]

# 1. Data
data_name = "the demo set" if common.is_demo(image_set) else f"**{common.set_name(image_set)}**"
step(columns[0], 1, "Data", f"{viz.set_overview(image_set)} in {data_name}.", len(image_set.normal_train) >= 2)
with columns[0]:
    st.page_link("app_pages/data.py", label="Load your own photos", icon=":material/upload:")

# 2. Train
active = [job for job in manager.active() if job.spec.data == str(image_set.root)]
if active:
    job = active[0]
    progress = job.progress
    train_state = f"Training {get_method_class(job.spec.method).title}: {progress.fraction:.0%} of {progress.phase}."
elif latest is not None:
    auroc = (latest.get("metrics") or {}).get("image_auroc")
    train_state = f"Latest run: **{viz.run_title(latest, latest_id)}**, {get_method_class(latest['method']).title}" + (
        f", image AUROC {auroc:.3f}." if auroc is not None else "."
    )
else:
    train_state = "No run on this set yet."
step(columns[1], 2, "Train", train_state, latest is not None)
with columns[1]:
    if active:  # a second click would only queue the same run again
        st.page_link("app_pages/train.py", label="Watch it on the Train page", icon=":material/monitoring:")
    else:
        st.button(
            "Train the recommended method on this set",
            type="primary" if latest is None else "secondary",
            icon=":material/play_arrow:",
            key="home.train",
            on_click=train_recommended,
            disabled=len(image_set.normal_train) < 2,
            help=f"{recommended.title} with its default settings; it stops after "
            f"{catalog.RECOMMENDED_BUDGET_S / 60:.0f} min at most and keeps what it has learned.",
        )
        st.caption(f"{recommended.title}: {catalog.format_estimate(estimate)} on this set.")
        st.page_link("app_pages/train.py", label="Pick a method yourself", icon=":material/tune:")

# 3. Threshold
threshold = None
if latest is not None:
    threshold, _ = saved_threshold(common.load_run_scores(common.runs_root() / latest_id))
threshold_state = (
    "Train a model first." if latest is None
    else "Threshold not saved: the default (5 % false alarms) is used." if threshold is None
    else f"Threshold saved: {threshold.value:.4g} ({threshold.how})."
)  # fmt: skip
step(columns[2], 3, "Threshold", threshold_state, threshold is not None)
with columns[2]:
    st.page_link(
        "app_pages/scores.py", label="Set the threshold", icon=":material/tune:", disabled=latest is None
    )

# 4. Share
share_state = (
    "Nothing to share yet." if latest is None
    else "Ready: a model file and an HTML report of the latest run." if threshold is not None
    else "Ready, with the default threshold; save one first to hand on your own."
)  # fmt: skip
step(columns[3], 4, "Share", share_state, False)
with columns[3]:
    st.page_link(
        "app_pages/compare.py", label="Model file and report", icon=":material/download:",
        disabled=latest is None,
    )  # fmt: skip

common.prefetch_page_code()  # last: once the page is drawn

if st.session_state.pop("home.go_train", False):
    st.switch_page("app_pages/train.py")
