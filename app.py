"""Anomaly Inspector: page navigation and the session's shared state; every page lives in app_pages/."""

import streamlit as st

if __name__ == "__main__" and not st.runtime.exists():
    # ``python app.py [streamlit options]`` (dev.sh app): load the libraries the pages need (torch,
    # scikit-learn, plotly: seconds on a small machine) first, then start the server in this process,
    # so the address it prints opens at once: the first visitor does not wait for those imports.
    # Streamlit then runs this file again as the app's script, where the runtime exists.
    import sys

    import adcore.jobs  # noqa: F401  (torch and the methods)
    import adcore.loaded_model  # noqa: F401
    import adcore.projection  # noqa: F401  (scikit-learn)
    import adcore.report  # noqa: F401
    import adcore.training  # noqa: F401
    import adcore.viz  # noqa: F401  (plotly)
    import pandas.io.formats.style  # noqa: F401  (jinja2 and its templates: Compare's styled table)
    from streamlit.web import cli

    sys.argv = ["streamlit", "run", __file__, *sys.argv[1:]]
    sys.exit(cli.main())

from adcore import viz
from adcore.methods import DEFAULT_METHOD, get_method_class
from app_pages import common

st.set_page_config(page_title="Anomaly Inspector", page_icon=viz.app_icon(), layout="wide")

# Shared by the pages of one browser session. The image set is opened lazily (setdefault would
# evaluate its argument on every rerun); open_set is cached per server anyway.
if "image_set" not in st.session_state:
    st.session_state["image_set"] = common.open_set(str(common.DEMO_DIR))
st.session_state.setdefault("augmentations", list(get_method_class(DEFAULT_METHOD).default_augmentations))
st.session_state.setdefault("selected_run", None)  # run id the Explore/Compare pages open first

PAGES = {
    "Start": [
        st.Page("app_pages/home.py", title="Home", icon=":material/home:", default=True),
    ],
    "Data": [
        st.Page("app_pages/data.py", title="Data", icon=":material/photo_library:"),
        st.Page("app_pages/augmentations.py", title="Augmentations", icon=":material/auto_fix_high:"),
    ],
    "Model": [
        st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
    ],
    "Explore": [
        st.Page("app_pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
        st.Page("app_pages/scores.py", title="Scores & threshold", icon=":material/tune:"),
        st.Page("app_pages/inspect.py", title="Inspect", icon=":material/zoom_in:"),
        st.Page("app_pages/compare.py", title="Compare", icon=":material/compare:"),
    ],
}

st.navigation(PAGES).run()
