"""Data page: what is in the current image set, what was left out and why, and loading another set."""

from pathlib import Path

import streamlit as st

from adcore import viz
from adcore.data import DATA_ROOTS_ENV, IMAGE_EXTENSIONS, allowed_path, open_image_set
from app_pages import common


THUMB_SIZE = 128
MAX_THUMBS = 48  # per group; a big set would otherwise send thousands of images to the browser
LAYOUTS = {
    "mvtec": "MVTec AD layout: train/good, test/<class>, ground_truth/<class>",
    "plain": "plain folder: every image is a normal training image",
}

image_set = common.current_image_set()
summary = image_set.summary()

st.title("Data")
source = "the demo set (synthetic turned flanges)" if common.is_demo(image_set) else f"**{common.set_name(image_set)}**"
with st.container(horizontal=True, vertical_alignment="center"):
    st.markdown(f"Working on {source} · {LAYOUTS.get(image_set.layout, image_set.layout)}")
    if not common.is_demo(image_set) and st.button("Back to the demo set", icon=":material/undo:", key="data.demo"):
        common.use_image_set(common.open_set(str(common.DEMO_DIR)))
        st.rerun()

# --- what is in the set ---------------------------------------------------------------------------
normal_train = image_set.normal_train
test = image_set.test
c1, c2, c3, c4, c5 = st.columns(5)
c1.metric("Normal training images", len(normal_train))
c2.metric("Test images", len(test))
c3.metric("Defect classes", len(image_set.defect_classes))
c4.metric("Masks", sum(r.mask_path is not None for r in test))
c5.metric("Skipped files", len(image_set.skipped))

if len(normal_train) < 2:
    usable = "No usable normal training image" if not normal_train else "Only one usable normal training image"
    st.warning(f"{usable}: training needs at least 2. Upload more photos of good parts below.")
elif not test:
    st.info(
        "No test images: training works, but there are no labelled defects to measure it on "
        "(the run still checks itself on synthetic CutPaste defects)."
    )

table_col, info_col = st.columns([3, 2], gap="large")
with table_col:
    st.subheader("Images per split and class")
    rows = viz.counts_rows(summary)
    if rows:
        st.dataframe(rows, hide_index=True, width="stretch")
    else:
        st.error("No usable images in this set.")
with info_col:
    st.subheader("Image sizes")
    st.write(viz.size_summary(summary) or "–")
    if not image_set.skipped:
        st.success("No files skipped: every file of the set is used.")
if image_set.skipped:
    st.subheader("Skipped files")
    common.skipped_table([(s.rel_path, s.reason) for s in image_set.skipped])

# --- another set ----------------------------------------------------------------------------------
st.subheader("Use your own images")
upload_tab, folder_tab = st.tabs(["Upload files", "Folder on the server"])

with upload_tab:
    st.markdown(
        "Photos of **good parts** (loose images or a .zip of them) become normal training images.\n\n"
        "To add **defect images with masks**, upload a single .zip in the MVTec AD layout: "
        "`train/good/…` for good parts, `test/good/…` and `test/<defect>/…` for test images, and "
        "`ground_truth/<defect>/<name>_mask.png` for each defect image's mask (white = defect). "
        "Loose defect images cannot be told apart from good ones, so they need the zip."
    )
    # A new key after each use empties the uploader, so the same files are not used twice.
    upload_round = st.session_state.setdefault("data.upload_round", 0)
    uploads = st.file_uploader(
        "Images or zip files",
        type=sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS) + ["zip"],
        accept_multiple_files=True,
        key=f"data.uploads.{upload_round}",
    )
    if st.button("Use the uploaded files", disabled=not uploads, type="primary", key="data.use_uploads"):
        try:
            with st.spinner("Saving and checking the files…"):
                new_set = common.save_uploaded_files((f.name, f.getvalue()) for f in uploads)
        except OSError as exc:  # the server's disk, not the files: full, or not writable
            st.error(f"Could not save the uploaded files on the server: {exc}")
        else:
            if new_set.records:  # a set with nothing usable would only replace the one there is
                common.use_image_set(new_set)
            st.session_state["data.upload_round"] = upload_round + 1
            st.session_state["data.upload_report"] = {
                "root": str(new_set.root),
                "used": bool(new_set.records),
                "usable": len(new_set.records),
                "refused": [(s.rel_path, s.reason) for s in common.refused_zips(new_set.skipped)],
                "skipped": [(s.rel_path, s.reason) for s in new_set.skipped],
            }
            st.rerun()
    report = st.session_state.get("data.upload_report")
    if report and not report.get("used", True):
        del st.session_state["data.upload_report"]  # said once, right after the upload
        n = len(report["skipped"])
        st.error(
            f"None of the {viz.plural(n, 'uploaded file')} can be used, so you are still working on "
            f"{common.set_name(image_set)}. Why each was skipped:"
        )
        common.skipped_table(report["skipped"])
    elif report and report["root"] == str(image_set.root):
        for name, reason in report["refused"]:
            st.error(f"{name}: {reason}")
        skipped = f"{len(image_set.skipped)} skipped: see the list above" if image_set.skipped else "none skipped"
        st.success(f"Now working on the uploaded set **{common.set_name(image_set)}**: "
                   f"{viz.plural(report['usable'], 'usable image')}, {skipped}.")  # fmt: skip

with folder_tab:
    roots = common.data_roots()
    st.markdown(
        "A folder (or .zip) on the machine running this app, in the MVTec AD layout or a plain "
        "folder of good-part photos, inside one of the folders this server opens: "
        + ", ".join(f"`{root}`" for root in roots)
        + "."
    )
    st.caption(f"The server's administrator sets these with the `{DATA_ROOTS_ENV}` environment variable.")
    folder = st.text_input("Path", placeholder=str(roots[0] / "mvtec" / "bottle") if roots else "", key="data.folder")
    if st.button("Open", disabled=not folder.strip(), key="data.open_folder"):
        try:
            path = allowed_path(folder.strip(), roots)
            if path.is_dir():
                common.open_set.clear(str(path.resolve()))  # "Open" always looks at the files afresh
                new_set = common.open_set(str(path.resolve()))
            else:  # a zip is extracted into a new folder under data/uploads
                new_set = open_image_set(path, extract_dir=common.new_upload_dir(path.stem))
        except (OSError, ValueError) as exc:
            st.error(f"Cannot open {folder.strip()}: {exc}")
        else:
            common.use_image_set(new_set)
            st.rerun()

# --- thumbnails ---------------------------------------------------------------------------------
st.divider()
st.subheader("Images")
groups = [("Normal training", normal_train)]
for label in sorted({r.label for r in test}, key=lambda name: (name != "good", name)):
    groups.append((f"Test: {label}", [r for r in test if r.label == label]))
groups = [(name, records) for name, records in groups if records]
if groups:
    st.caption("Defect areas from the ground-truth masks are outlined in red.")
    for tab, (name, records) in zip(st.tabs([f"{name} ({len(records)})" for name, records in groups]), groups):
        with tab:
            shown = tuple(records[:MAX_THUMBS])
            if len(records) > len(shown):
                st.caption(f"The first {len(shown)} of {len(records)} images.")
            st.image(
                common.thumbnails(shown, THUMB_SIZE),
                caption=[Path(r.rel_path).name for r in shown],
                width=THUMB_SIZE,
            )
