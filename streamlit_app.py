"""vitlab's attention explorer: choose a model and an image, and watch where the Vision Transformer looks.

    streamlit run streamlit_app.py

Widgets and caches only: everything else is the vitlab.explorer package's (the per-image views, the drawing, the
model sources and the uploads), and the analyses are vitlab.attention's. The model is cached with st.cache_resource
(shared by every session, never mutated) and each image's forward pass with st.cache_data, so a layer or head slider
redraws from cached attention without running the model again; those sliders live in a fragment (`attention_views`),
so moving one reruns and redraws only the views it changes.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import streamlit as st
import torch

from vitlab import explorer

SOURCE_LABELS = {
    "demo": "Demo model (shapes, offline)",
    "checkpoint": "A vitlab checkpoint",
    "imagenet": "ImageNet ViT-B/16",
}
FUSIONS = ("mean", "max", "min")
PREDICTED = -1  # the class selector's "explain the predicted class"


# ---------------------------------------------------------------------------------------------------------------
# Caches: a model by its source (shared resource), everything per image by (model key, image key) (data)
# ---------------------------------------------------------------------------------------------------------------


@st.cache_resource(max_entries=3, show_spinner="Loading the model (the demo model trains once, on first use)...")
def load_source(source: str, path: str | None, stamp: str) -> explorer.LoadedModel:
    """`stamp` names the files behind the model (cache folder, modification time), so a changed file reloads."""
    return explorer.load_model_source(source, path)


@st.cache_data(max_entries=32, show_spinner=False)
def prepare_upload(upload_key: str, image_size: int, _data: bytes) -> explorer.PreparedImage:
    return explorer.preprocess_upload(_data, image_size)


@st.cache_data(max_entries=16, show_spinner="Running the model on this image...")  # ViT-B/16: 22 MB each
def analyse(model_key: str, image_key: str, _loaded: explorer.LoadedModel, _image: torch.Tensor):
    return explorer.analyse_image(_loaded.model, _image)


@st.cache_data(max_entries=64, show_spinner="Computing the class-specific map (forward and backward pass)...")
def explain(model_key: str, image_key: str, target: int | None, _loaded: explorer.LoadedModel, _image: torch.Tensor):
    return explorer.class_map(_loaded.model, _image, target)


@st.cache_data(max_entries=8, show_spinner="Measuring how far each head looks (once per model)...")
def distance_png(model_key: str, images_key: str, _loaded: explorer.LoadedModel, _images: torch.Tensor) -> bytes:
    distances = explorer.mean_distances(_loaded.model, _images)  # (layers, heads)
    return explorer.distance_figure_png(distances, _loaded.model.patch_size)


def keep_in(key: str, allowed, default) -> None:
    """Reset a widget's remembered value when it no longer fits (another model has other layers, classes...)."""
    if st.session_state.get(key, default) not in allowed:
        st.session_state[key] = default
    st.session_state.setdefault(key, default)


def pick_random_image(count: int) -> None:
    st.session_state["image_index"] = random.randrange(count)


# ---------------------------------------------------------------------------------------------------------------
# Controls in the sidebar: the model and the image
# ---------------------------------------------------------------------------------------------------------------


def choose_model() -> explorer.LoadedModel:
    st.sidebar.header("Model")
    available = explorer.imagenet_available()
    labels = {**SOURCE_LABELS, "imagenet": SOURCE_LABELS["imagenet"] + ("" if available else " (unavailable)")}
    keep_in("model_source", explorer.SOURCES, "demo")
    source = st.sidebar.selectbox("Model source", explorer.SOURCES, format_func=labels.get, key="model_source")
    if not available:
        cache_file = explorer.weights_cache_file()
        st.sidebar.caption(f"ImageNet ViT-B/16 is unavailable: put {cache_file.name} in {cache_file.parent}.")

    checkpoint = None
    if source == "imagenet" and not available:
        st.warning(f"The ImageNet ViT-B/16 weights are not on this machine. {explorer.imagenet_hint()}")
        st.stop()
    if source == "checkpoint":
        checkpoint = choose_checkpoint()
    try:
        stamp = explorer.source_stamp(source, checkpoint)
        loaded = load_source(source, None if checkpoint is None else str(checkpoint), stamp)
    except (explorer.VitlabError, RuntimeError) as error:  # RuntimeError: training the demo model failed
        st.error(str(error))
        st.stop()
    st.sidebar.caption(loaded.description)
    return loaded


def choose_checkpoint() -> Path:
    """A run under the runs folder or a typed path inside it, as the checkpoint file it means; stops the page with a
    message if none, or if the path is outside the runs folder (`streamlit run streamlit_app.py -- --runs DIR`)."""
    root = explorer.runs_folder(sys.argv[1:])
    runs = [str(run) for run in explorer.list_runs(root)]
    keep_in("run_choice", [""] + runs, "")
    run = st.sidebar.selectbox(
        f"Run under {root}/", [""] + runs, key="run_choice", format_func=lambda r: r or "(choose a run)"
    )
    if not runs:
        st.sidebar.caption(f"No runs under {root}/ yet: python -m vitlab.finetune --preset demo --out {root}/demo")
    typed = st.sidebar.text_input(f"...or a checkpoint file or run folder under {root}/", key="checkpoint_path").strip()
    if not (typed or run):
        st.info(f"Choose a run under {root}/ in the sidebar, or type the path of a vitlab checkpoint in it.")
        st.stop()
    try:
        return explorer.resolve_checkpoint(typed or run, root=root)
    except explorer.VitlabError as error:
        st.error(str(error))
        st.stop()


def choose_image(loaded: explorer.LoadedModel) -> tuple[torch.Tensor, str, list[str]]:
    """The image uint8 (3, H, W), its cache key, and lines to show under it."""
    st.sidebar.header("Image")
    image_sources = ["dataset", "upload"] if loaded.images is not None else ["upload"]
    keep_in("image_source", image_sources, image_sources[0])
    names = {"dataset": "Browse the dataset", "upload": "Upload an image"}
    source = st.sidebar.radio("Image source", image_sources, format_func=names.get, key="image_source", horizontal=True)
    if loaded.images is None:
        st.sidebar.caption(loaded.images_note)

    if source == "dataset":
        images = loaded.images
        count = len(images)
        keep_in("image_index", range(count), 0)
        index = st.sidebar.number_input(f"Image index (0 to {count - 1})", 0, count - 1, step=1, key="image_index")
        st.sidebar.button("Random image", key="random_image", on_click=pick_random_image, args=(count,))
        st.sidebar.caption(loaded.images_note)
        label = images.classes[int(images.labels[index])]
        line = f"True label: **{label}**" if images.classes == loaded.classes else f"Dataset label: {label}"
        return images.images[index], f"dataset:{index}", [line]

    upload = st.sidebar.file_uploader("PNG or JPEG image", type=["png", "jpg", "jpeg"], key="upload")
    if upload is None:
        st.info("Upload a PNG or JPEG image in the sidebar to see where the model looks.")
        st.stop()
    data = upload.getvalue()
    key = explorer.image_key(data)
    try:
        prepared = prepare_upload(key, loaded.model.image_size, data)
    except explorer.VitlabError as error:
        st.error(f"{upload.name}: {error}")
        st.stop()
    return prepared.image, f"upload:{key}", [f"Uploaded: {upload.name}", *prepared.notes]


# ---------------------------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------------------------


def show(image: torch.Tensor, grid_map: torch.Tensor | None, grid: int | None, **options) -> None:
    """One view: `image` with `grid_map` over it, drawn as a numpy array (cheap enough for every slider move)."""
    picture = explorer.render_overlay(image, grid_map, patch_grid=grid, **options)
    st.image(picture, width="stretch", output_format=explorer.VIEW_FORMAT)


def main() -> None:
    st.set_page_config(page_title="vitlab attention explorer", layout="wide")
    # Less empty space above the title: on a projector every row counts.
    st.html("<style>[data-testid='stMainBlockContainer'] {padding-top: 2.5rem}</style>")
    st.title("Where does the Vision Transformer look?")
    loaded = choose_model()
    image, image_key, image_lines = choose_image(loaded)
    views = analyse(loaded.key, image_key, loaded, image)
    st.sidebar.header("Display")
    grid = views.geometry.grid_size if st.sidebar.toggle("Show the patch grid", key="patch_grid") else None

    geometry, classes = views.geometry, loaded.classes
    picture, prediction, why = st.columns(3, gap="large")
    with picture:
        st.subheader("Image")
        show(image, None, grid)
        st.markdown("  \n".join(image_lines))
        st.caption(
            f"What the model sees: {geometry.image_size}x{geometry.image_size} pixels cut into a "
            f"{geometry.grid_size}x{geometry.grid_size} grid of {geometry.patch_size}-pixel patches."
        )
    with prediction:
        st.subheader("Prediction")
        for index, probability in views.top_k(5):
            st.progress(min(max(probability, 0.0), 1.0), text=f"**{classes[index]}**: {probability:.1%}")
        st.caption("The five most likely classes and their softmax probabilities.")
    with why:
        st.subheader("Class-specific")
        predicted = views.top_k(1)[0][0]
        keep_in("target_class", range(PREDICTED, len(classes)), PREDICTED)
        target = st.selectbox(
            "Explain the class", range(PREDICTED, len(classes)), key="target_class",
            format_func=lambda c: f"predicted: {classes[predicted]}" if c == PREDICTED else classes[c],
        )
        relevance, explained = explain(loaded.key, image_key, None if target == PREDICTED else target, loaded, image)
        show(image, relevance, grid)
        st.caption(
            f"Gradient-weighted attention (Chefer et al. 2021) for **{classes[explained]}** "
            f"({float(views.probs[explained]):.1%}): the patches whose attention raised that class's score."
        )

    st.divider()
    attention_views(image, views, grid)

    st.divider()
    st.subheader("Mean attention distance")
    if loaded.images is not None:
        sample, sample_key = loaded.images.images[: explorer.DISTANCE_IMAGES], "dataset"
    else:
        sample, sample_key = image[None], image_key
    left, _ = st.columns([3, 2])
    with left:
        st.image(distance_png(loaded.key, sample_key, loaded, sample), width="stretch")
    st.caption(
        f"How far, in pixels, each head looks on average in every block, over {len(sample)} "
        f"image{'s' if len(sample) > 1 else ''}: the ViT paper's measure of local versus global attention."
    )


@st.fragment
def attention_views(image: torch.Tensor, views: explorer.ImageViews, grid: int | None) -> None:
    """Everything the layer, head, query and rollout controls change. A fragment: moving one of them reruns only
    this part of the page, from the cached forward pass, so the browser redraws only these views."""
    keep_in("layer", range(1, views.num_layers + 1), views.num_layers)
    keep_in("head", range(views.num_heads), 0)
    block_column, head_column = st.columns(2, gap="large")
    layer = block_column.slider("Encoder block (layer)", 1, views.num_layers, key="layer") - 1
    head = head_column.slider("Head", 0, views.num_heads - 1, key="head")

    attention, query, flow = st.columns(3, gap="large")
    with attention:
        st.subheader("Class token")
        show(image, views.cls_map(layer, head), grid)
        st.caption(
            f"Block {layer + 1}, head {head}: bright patches are where the class token looks, the token whose final "
            f"state the classifier reads."
        )
    with query:
        st.subheader("Query patch")
        size = views.geometry.grid_size
        keep_in("query_row", range(size), size // 2)
        keep_in("query_col", range(size), size // 2)
        rows, cols = st.columns(2)
        row = rows.slider("Patch row", 0, size - 1, key="query_row")
        col = cols.slider("Patch column", 0, size - 1, key="query_col")
        show(image, views.query_map(layer, head, row, col), grid, highlight=(row, col))
        st.caption(f"Block {layer + 1}, head {head}: where the outlined patch looks, its own row of attention.")
    with flow:
        st.subheader("Rollout")
        fusions, discards = st.columns(2)
        fusion = fusions.selectbox("Head fusion", FUSIONS, key="fusion")
        discard = discards.slider("Discard ratio", 0.0, 0.9, 0.0, 0.05, key="discard_ratio")
        show(image, views.rollout_map(fusion, discard), grid)
        st.caption(
            "All blocks at once: attention multiplied through the layers, plus the residual path; discarding the "
            "weakest links sharpens the map."
        )

    st.subheader(f"All {views.num_heads} heads of block {layer + 1}")
    panels = [explorer.render_overlay(image, m, explorer.HEAD_VIEW_PX, patch_grid=grid) for m in views.head_maps(layer)]
    names = [f"head {index}" + (" (chosen)" if index == head else "") for index in range(views.num_heads)]
    st.image(panels, caption=names, width=explorer.HEAD_VIEW_PX, output_format=explorer.VIEW_FORMAT)  # one element
    st.caption("The class token's attention in every head of the chosen block: heads of one block look at different "
               "things.")


main()
