"""Embeddings page: a t-SNE or UMAP map of a run's image embeddings, coloured by group or score;
select points to see their images."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import streamlit as st

from adcore import viz
from adcore.methods import get_method_class
from adcore.projection import project_run, projection_settings
from adcore.runs import Run
from app_pages import common


PROJECTIONS = {"tsne": "t-SNE", "umap": "UMAP"}
MAX_SHOWN = 12  # selected images shown as thumbnails; the rest are counted


@st.cache_data(show_spinner=False, max_entries=32)
def _projection(path: str, version: int, method: str, dims: int, perplexity: int, n_neighbors: int) -> np.ndarray:
    # project_run caches on disk in the run folder; this keeps the map in memory between reruns.
    return project_run(common.load_run_scores(Path(path)), method, dims, perplexity, n_neighbors)


def map_settings(run: Run) -> dict:
    """The settings form; the map is recomputed only when the form is submitted."""
    with st.form("embeddings.settings", border=True):
        c1, c2, c3, c4 = st.columns([2, 2, 3, 3], vertical_alignment="bottom")
        methods = list(PROJECTIONS)
        method = c1.radio(
            "Projection",
            methods,
            index=methods.index(common.kept("embeddings.method", "tsne")),
            format_func=PROJECTIONS.get,
            horizontal=True,
            key="embeddings.method",
            help="t-SNE keeps close neighbours close; UMAP also keeps more of the large-scale layout.",
        )
        dims = c2.radio("Dimensions", [2, 3], index=[2, 3].index(common.kept("embeddings.dims", 2)),
                        format_func=lambda d: f"{d}-D", horizontal=True, key="embeddings.dims")  # fmt: skip
        perplexity = c3.slider(
            "Perplexity (t-SNE)", 2, 100, common.kept("embeddings.perplexity", 30), key="embeddings.perplexity",
            help="About how many neighbours each image keeps close.",
        )
        n_neighbors = c4.slider(
            "Neighbours (UMAP)", 2, 100, common.kept("embeddings.n_neighbors", 15), key="embeddings.n_neighbors",
            help="Small: fine local structure; large: the global layout.",
        )
        st.form_submit_button("Draw map", type="primary", icon=":material/scatter_plot:")
    settings = {"method": method, "dims": int(dims), "perplexity": int(perplexity), "n_neighbors": int(n_neighbors)}
    for name, value in settings.items():
        common.keep(f"embeddings.{name}", value)
    return settings


def show_selection(run: Run, ctx: viz.ScoreContext, rows: list[int]) -> None:
    if not rows:
        st.markdown("**Selected images**")
        st.caption(
            "Click a point to see its image here, or pick the box or lasso tool above the map and drag "
            "around points to see theirs. Hovering a point shows its file name, group and score; clicking "
            "a legend entry hides that group."
        )
        return
    counts = Counter(viz.group_label(str(ctx.groups[r])) for r in rows)
    st.markdown(f"**{len(rows)} selected** · " + ", ".join(f"{n} {g}" for g, n in counts.most_common()))
    shown = sorted(rows, key=lambda r: -ctx.scores[r])[:MAX_SHOWN]
    if len(rows) > len(shown):
        st.caption(f"The {len(shown)} highest-scoring are shown.")
    common.show_rows(run, ctx, shown, columns=3, key="embeddings.selected")


# --- the page -----------------------------------------------------------------------------------

st.title("Embeddings")
run = common.pick_run("embeddings")
if "embedding" not in run.results:
    title = get_method_class(run.method_name).title or run.method_name
    st.info(
        f"This run's method ({title}) stores no embeddings, so there is nothing to map. Its scores and "
        "anomaly maps are on the Scores & threshold and Inspect pages.",
        icon=":material/info:",
    )
    st.stop()

choice = common.scorer_choice(run)
ctx = common.score_context(run, choice)
n, dim = run.results["embedding"].shape
st.caption(
    f"Each point is one image's {dim}-number embedding, laid out so that images the model finds similar "
    f"sit close together. {n} images: training and hold-out normals, test images and synthetic defects. "
    "Good separation means defects fall apart from the normal cloud."
)
settings = map_settings(run)
plan = projection_settings(n, **{k: settings[k] for k in ("method", "dims", "perplexity", "n_neighbors")})
for note in plan.notes:
    st.caption(note)
wait = f"Computing the {PROJECTIONS.get(plan.method, plan.method.upper())} map of {n} images…"
if plan.method == "umap":
    wait += " The first UMAP map after the server starts compiles its code for about 20 s; later ones take seconds."
with st.spinner(wait):
    coords = _projection(str(run.path), common.run_version(run), **settings)

color_by = common.keep(
    "embeddings.color",
    st.segmented_control(
        "Colour by",
        ["group", "score"],
        default=common.kept("embeddings.color", "group"),
        format_func=lambda c: {"group": "Group", "score": f"Anomaly score ({common.scorer_title(choice)})"}[c],
        key="embeddings.color",
    )
    or "group",
)
figure = viz.embedding_figure(coords, ctx.groups, ctx.order, ctx.scores, ctx.names, color_by=color_by)
map_col, side_col = st.columns([3, 2], gap="medium")
with map_col:
    key = f"embeddings.map.{run.run_id}.{plan.method}.{plan.dims}.{plan.perplexity}.{plan.n_neighbors}"
    if plan.dims == 3:
        st.plotly_chart(figure, key=key)
        st.caption("Drag to turn the 3-D map. Selecting points works on the 2-D map only.")
        selected = []
    else:
        event = st.plotly_chart(figure, key=key, on_select="rerun", selection_mode=("points", "box", "lasso"))
        selected = viz.selected_rows(event.selection)
with side_col:
    show_selection(run, ctx, selected)
