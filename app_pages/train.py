"""Train page: configure a method from the registry, start it as a background job, watch it live."""

import time

import streamlit as st

from adcore import catalog, viz
from adcore.backbones import BACKBONES, resnet18_weights_path
from adcore.jobs import CANCELLED, ENGINES, FAILED, FINISHED, RUNNING, Job, JobManager
from adcore.ray_engine import RAY_REQUIREMENTS, ray_available
from adcore.methods import DEFAULT_METHOD, METHODS, build_method, get_method_class
from adcore.methods.auto import describe_selection
from adcore.runs import list_runs
from adcore.training import TrainSpec
from app_pages import common


POLL_S = 1.0
N_PREVIEW = 4

image_set = common.current_image_set()
manager = common.job_manager()
normal_train = image_set.normal_train


def method_title(name: str) -> str:
    return get_method_class(name).title or name


def teacher_options(runs_root) -> dict[str, str]:
    """{value of a ``teacher`` parameter: what a user reads} for every possible teacher: the ImageNet
    backbones, then the runs (newest first) whose method gives dense features. Values are what
    ``teacher`` accepts: a backbone name or a run folder."""
    options = {name: f"{name} (ImageNet, frozen)" for name in BACKBONES.names()}
    if "resnet18" in options and not resnet18_weights_path().is_file():
        options["resnet18"] = (
            "resnet18: its ImageNet weights are not on this machine, efficientnet_lite0 is used instead"
        )
    runs, _ = list_runs(runs_root)
    for run in runs:
        try:
            method = get_method_class(run.method_name)
        except ValueError:  # a run of a method this version does not know
            continue
        if callable(getattr(method, "dense_features", None)):
            name = run.config.get("name") or ""
            options[str(run.path)] = f"run {run.run_id} · {method.title}" + (f" · {name}" if name else "")
    return options


# --- live progress ------------------------------------------------------------------------------


def job_label(job: Job) -> str:
    engine = job.engine_detail or ("Ray" if job.engine == "ray" else "this machine")
    return (f"{method_title(job.spec.method)} · job `{job.id}` · on {engine}"
            + (f" · {job.spec.name}" if job.spec.name else ""))


def show_running(job: Job) -> None:
    p = job.progress
    st.markdown(f"**{job_label(job)}**")
    if job.stop_event.is_set():
        st.warning("Cancelling: the job stops at its next progress report…")
    text = f"{p.phase}: step {p.step} of {p.total_steps}" if p.total_steps else f"{p.phase}…"
    st.progress(p.fraction, text=text)
    epochs = catalog.method_params(job.spec.method, job.spec.params).get("epochs")
    if epochs:  # one-pass methods have neither epochs nor a loss
        c1, c2, c3 = st.columns(3)
        c1.metric("Epoch", "–" if p.epoch is None else f"{p.epoch} / {epochs}")
        c2.metric("Loss", "–" if p.loss is None else f"{p.loss:.4f}")
        c3.metric("Images / s", "–" if p.images_per_s is None else f"{p.images_per_s:.1f}")
    c4, c5, c6 = st.columns(3)
    c4.metric("Elapsed", viz.format_seconds(time.time() - job.started if job.started else None))
    c5.metric(
        "Time left",
        viz.format_seconds(p.eta_s),
        help=f"In this phase ({p.phase}), from how fast it has gone so far; the phases after it "
        "(scoring, the embedding map) come on top.",
    )
    if epochs:
        c6.metric("Device", (job.device or "–").split(" (")[0], help=job.device or None)
    else:
        c6.metric("Images / s", "–" if p.images_per_s is None else f"{p.images_per_s:.1f}")
    if p.losses:
        total = p.total_steps if p.phase == "training" else None
        st.plotly_chart(viz.loss_curve_figure(p.losses, total), key=f"train.loss.{job.id}")
    st.button(
        "Cancel training",
        icon=":material/stop_circle:",
        key=f"train.cancel.{job.id}",
        on_click=job.cancel,
        disabled=job.stop_event.is_set(),
    )


def show_selection(selection: dict, title: str) -> None:
    """The candidates a self-configuring method judged, best first, and what it decided."""
    rows, sentence = describe_selection(selection)
    st.markdown(f"**{title}**")
    st.caption(sentence)
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch", column_config={
            "selection score": st.column_config.ProgressColumn(format="%.3f", min_value=0.5, max_value=1.0),
        })


def show_queue(queued: list[Job], ahead: int) -> None:
    st.markdown(f"**Queued ({len(queued)})** · jobs on this machine run one at a time, in this order")
    for position, job in enumerate(queued, start=ahead + 1):
        text, button = st.columns([3, 2], vertical_alignment="center")
        text.markdown(f"{position}. {job_label(job)}")
        button.button("Remove", key=f"train.remove.{job.id}", on_click=job.cancel)


def show_outcome(job: Job) -> None:
    took = viz.format_seconds(job.ended - job.started) if job.started and job.ended else "–"
    label = job_label(job)
    if job.status == FINISHED:
        run_id = job.run_dir.name
        if job.id == st.session_state.get("train.job_id"):
            st.session_state["selected_run"] = run_id
        config = dict(common.run_configs(manager.runs_root)[0]).get(run_id, {})
        took = viz.format_seconds(config.get("total_seconds", job.ended - job.started))
        st.success(f"Finished in {took}: {label}\n\nRun **`{run_id}`** saved.")
        st.caption(viz.phase_line(config))
        rows, _ = common.runs_table(manager.runs_root)
        row = next((r for r in rows if r["run id"] == run_id), None)
        if row is not None:
            if row["budget stop"]:
                st.caption(f"Training stopped at the time budget after {row['training s']:.0f} s; the model was kept.")
            metrics = [("Image AUROC", row["image AUROC"]), ("Pixel AUROC", row["pixel AUROC"])]
            if any(v is not None for _, v in metrics):
                for col, (name, value) in zip(st.columns(len(metrics)), metrics):
                    col.metric(name, "–" if value is None else f"{value:.3f}")
            else:
                st.caption("This data has no labelled test images, so there are no test metrics.")
        st.markdown("**Next:** set where a photo counts as defective, or look at the heat maps.")
        with st.container(horizontal=True):
            st.page_link("app_pages/scores.py", label="Scores & threshold", icon=":material/tune:")
            st.page_link("app_pages/inspect.py", label="Inspect", icon=":material/zoom_in:")
    elif job.status == FAILED:
        st.error(f"Training failed after {took}: {label}\n\n{job.error}")
        with st.expander("Traceback (for a bug report)"):
            st.code(job.traceback or "no traceback", language="text")
    elif job.status == CANCELLED:
        st.warning(f"Cancelled after {took}: {label}. Nothing was saved.")


def live_panel(jobs: JobManager) -> None:
    # Poll only while something is queued or running; an idle page sends nothing.
    polling = bool(jobs.active())

    @st.fragment(run_every=POLL_S if polling else None)
    def panel() -> None:
        active = jobs.active()
        if polling and not active:
            st.rerun()  # the last job just ended: redraw the whole page (runs table), stop polling
        running = [j for j in active if j.status == RUNNING]
        queued = [j for j in active if j.status != RUNNING]
        for job in running:
            show_running(job)
        if queued:
            show_queue(queued, ahead=len(running))
        if not active:
            ended = jobs.jobs()
            if ended:
                show_outcome(ended[0])
            else:
                st.info("Nothing is training. Set up a run on the left, then press **Start training**.")

    panel()


def current_selection(jobs: JobManager) -> tuple[dict | None, str]:
    """What a self-configuring method chose (or is choosing) in the running job, else in the job that
    ended last, if it finished; with the title to show it under."""
    active = jobs.active()
    running = [j for j in active if j.status == RUNNING]
    if running:
        return running[0].progress.selection, "How the method configures itself"
    ended = jobs.jobs()
    if active or not ended or ended[0].status != FINISHED:
        return None, ""
    config = dict(common.run_configs(jobs.runs_root)[0]).get(ended[0].run_dir.name, {})
    return config.get("selection"), "How the method configured itself"


def selection_panel(jobs: JobManager) -> None:
    """The selection table, full width below the job panel (its columns do not fit beside the form);
    it follows the running job like the job panel does."""
    polling = bool(jobs.active())

    @st.fragment(run_every=POLL_S if polling else None)
    def panel() -> None:
        selection, title = current_selection(jobs)
        if selection:
            with st.container(border=True):
                show_selection(selection, title)

    panel()


# --- the page -----------------------------------------------------------------------------------

st.title("Train")
st.markdown(
    f"Training on {common.set_name(image_set)}: "
    f"{viz.plural(len(normal_train), 'normal training image')}, {viz.plural(len(image_set.test), 'test image')}."
)

config_col, run_col = st.columns([3, 2], gap="large")
problems = []
earlier_runs = [config for _, config in common.run_configs(manager.runs_root)[0]]
holdout_share = common.kept("train.holdout", 0.2)
n_fit = len(normal_train) - round(len(normal_train) * holdout_share)
n_scored = len(normal_train) + len(image_set.test)


def method_caption(name: str) -> str:
    """Group, what it is good for, and how long it takes on this set with its default settings."""
    seconds = catalog.estimate_training_seconds(name, n_fit, n_scored, earlier_runs=earlier_runs)
    return f"{catalog.group_of(name)} · good for {catalog.entry(name).good_for} · {catalog.format_estimate(seconds)}"


with config_col:
    names = catalog.in_picker_order(METHODS.names())
    chosen = common.kept("train.method", DEFAULT_METHOD)
    method_name = common.keep(
        "train.method",
        st.radio(
            "Method",
            names,
            index=names.index(chosen) if chosen in names else 0,
            format_func=method_title,
            captions=[method_caption(name) for name in names],
            key="train.method",
            help="Grouped: the recommended one first, then methods on pretrained features, methods that learn "
            "from scratch on your photos, and reconstruction methods. Times are for this set on this machine "
            "(measured by earlier runs where there are any).",
        ),
    )
    method = get_method_class(method_name)
    st.caption(method.summary)

    st.subheader("Parameters")
    takes_teacher = any(p.name == "teacher" for p in method.param_specs())
    options = {"teacher": teacher_options(manager.runs_root)} if takes_teacher else None
    params = common.param_inputs(method.param_specs(), f"train.{method_name}.param", columns=3, options=options)
    try:
        build_method(method_name, **params)
    except ValueError as exc:
        problems.append(str(exc))

    st.subheader("Augmentations")
    if method.augmentation_role:
        st.info(method.augmentation_role, icon=":material/info:")
    if not catalog.entry(method_name).uses_augmentations:
        chain = []  # nothing to choose and nothing to preview: training sees the photos as they are
    else:
        chain_key = f"train.{method_name}.aug"
        common.carry_page_chain(chain_key)
        chain = common.augmentation_editor(chain_key, method.default_augmentations)
        st.caption(f"Training uses this chain: {common.chain_source(chain, method.default_augmentations)}.")
        with st.container(horizontal=True):
            st.button(
                "Copy from the Augmentations page",
                on_click=common.preset_chain,
                args=(chain_key, st.session_state["augmentations"]),
                key="train.use_page_chain",
                help="Use the chain you built on the Augmentations page.",
            )
            st.button(
                "Reset to the method's defaults",
                on_click=common.preset_chain,
                args=(chain_key, method.default_augmentations),
                key="train.reset_chain",
            )
        if normal_train:
            size, seed = params.get("image_size"), params.get("seed", 0)
            picked = [normal_train[i] for i in viz.pick_indices(len(normal_train), N_PREVIEW, seed)]
            try:
                samples = viz.augmentation_samples(
                    common.images_of(picked), chain, seed, work_size=size, display_size=128
                )
            except ValueError as exc:
                problems.append(f"augmentations: {exc}")
            else:
                st.caption(f"What training sees: {N_PREVIEW} training images at {size}×{size} px.")
                common.show_samples(samples, columns=2)

with run_col:
    st.subheader("Run")
    holdout = common.remembered(
        st.slider,
        "Hold-out fraction",
        0.0,
        0.5,
        step=0.05,
        key="train.holdout",
        value=0.2,
        help="Share of the normal training images kept out of training; the run scores them to "
        "set a threshold and to estimate false alarms.",
    )
    r1, r2 = st.columns(2)
    budget_min = common.remembered(
        r1.number_input,
        "Time budget (minutes)",
        min_value=0.0,
        max_value=24 * 60.0,
        step=0.5,
        key="train.budget",
        value=0.0,
        help="0 = no limit. Otherwise training stops cleanly after this long and keeps the model it has.",
    )
    run_name = common.remembered(r2.text_input, "Run name (optional)", key="train.name", value="", max_chars=80)
    e1, e2 = st.columns(2)
    engines = list(ENGINES)
    engine = common.keep("train.engine", e1.radio(
        "Engine",
        engines,
        index=engines.index(common.kept("train.engine", "local")),
        key="train.engine",
        format_func=lambda name: {"local": "This machine", "ray": "Ray"}[name],
        horizontal=True,
        help="This machine: a background job here, one at a time. Ray: the job is submitted to a Ray cluster "
        "(one GPU per job where it has GPUs; jobs wait in Ray's queue), or to a local Ray instance without "
        "an address. The cluster's nodes must see this image set's folder.",
    ))
    ray_address = ""
    if engine == "ray":
        ray_address = common.remembered(
            e2.text_input, "Ray address (optional)", key="train.ray_address", value="",
            help="e.g. ray://head:10001 or auto; empty: a local Ray instance on this machine.",
        )
        if not ray_available():
            problems.append(f"the Ray engine needs Ray, an optional extra: pip install -r {RAY_REQUIREMENTS}")
    if len(normal_train) < 2:
        problems.append(f"the image set has {viz.plural(len(normal_train), 'normal training image')}; at least 2 are needed")
    for problem in problems:
        st.error(f"Cannot start: {problem}")
    expected = catalog.estimate_training_seconds(
        method_name, n_fit, n_scored, params, budget_s=budget_min * 60 or None, earlier_runs=earlier_runs
    )
    st.caption(f"Expected with these settings: {catalog.format_estimate(expected)} on this set.")
    if manager.active():
        st.caption("A job is running: a new one waits in the queue below.")
    start = st.button(
        "Start training", type="primary", icon=":material/play_arrow:", disabled=bool(problems), key="train.start"
    )
    if start:
        spec = TrainSpec(
            data=str(image_set.root),
            method=method_name,
            params=params,
            augmentations=chain,
            holdout_fraction=float(holdout),
            budget_s=budget_min * 60 if budget_min > 0 else None,
            name=run_name.strip(),
        )
        st.session_state["train.job_id"] = manager.submit(
            spec, image_set=image_set, engine=engine, ray_address=ray_address.strip() or None
        ).id

    st.subheader("Training jobs")
    live_panel(manager)

selection_panel(manager)

st.divider()
st.subheader("Earlier runs")
rows, broken = common.runs_table(manager.runs_root)
if rows:
    st.dataframe(
        rows,
        hide_index=True,
        width="stretch",
        column_config={
            "training s": st.column_config.NumberColumn(format="%.1f", help="The training phase alone."),
            "total s": st.column_config.NumberColumn(
                format="%.1f", help="Loading, training, scoring and the embedding map: the run's whole time."
            ),
            "budget stop": st.column_config.CheckboxColumn(help="Training was stopped by its time budget."),
            "image AUROC": st.column_config.NumberColumn(format="%.3f"),
            "pixel AUROC": st.column_config.NumberColumn(format="%.3f"),
        },
    )
else:
    st.info("No runs yet. Finished trainings are saved and listed here.")
if broken:
    st.warning(f"{len(broken)} folder(s) in the runs folder are not readable runs and are ignored:")
    st.dataframe([{"folder": name, "reason": reason} for name, reason in broken], hide_index=True, width="stretch")
