"""The explorer's guided tour: the course's ideas, one step per screen, in the lessons' order.

    for step in TOUR:                     # TourStep: key (which view the page draws), title, text, question...
        step.lesson_path                  # lessons/01_patches.py: where the idea is written out in code

Only data: the page (vitlab.explorer.pages.tour) draws each step's view by its key. tests/test_app_modes.py checks
that every lesson named exists and that the steps follow the lessons' numbering.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

LESSONS_FOLDER = "lessons"


@dataclass(frozen=True)
class TourStep:
    """One screen of the tour: the view to draw, a few sentences, and a question to answer before looking."""

    key: str  # which view the page draws (the tour page has one drawing per key)
    title: str
    text: str  # two or three sentences: the idea
    question: str  # "predict before you look": asked before the view is revealed
    answer: str  # what to look for once the view is shown
    lesson: str  # the lesson file under lessons/ that writes the idea out in code

    @property
    def lesson_path(self) -> str:
        """The lesson's path from the repository root, e.g. lessons/01_patches.py."""
        return str(PurePosixPath(LESSONS_FOLDER) / self.lesson)

    @property
    def lesson_number(self) -> int:
        """The lesson's number, from its file name (01_patches.py -> 1)."""
        return int(self.lesson.split("_", 1)[0])


TOUR: tuple[TourStep, ...] = (
    TourStep(
        "patches", "An image is a sequence of patches",
        "A Vision Transformer never sees pixels one by one: it cuts the image into a grid of square patches and "
        "reads them as a sequence of tokens, like words in a sentence. Each view in this explorer is drawn on that "
        "grid.",
        "How many patches does this model cut the image into, and what is the smallest thing it could point at?",
        "Count the grid: every map in the explorer has one value per patch, so nothing finer than a patch can be "
        "highlighted.", "01_patches.py"),
    TourStep(
        "patch_embeddings", "Each patch becomes a vector",
        "One linear map (a strided convolution) turns every patch into a vector. Its filters, reduced to their "
        "principal components, show the basis the model uses to describe a patch.",
        "Before you look: will the main components look like noise, or like smooth colour and edge patterns?",
        "The first components are smooth: blobs of brightness and gradients (the photos are gray), like the first "
        "filters of a convolutional network.", "02_patch_embeddings.py"),
    TourStep(
        "position_embeddings", "Where is each patch?",
        "Patches carry no position of their own, so the model adds a learned position embedding to each. Each small "
        "map shows how similar one position's embedding is to every other.",
        "If the model learned the image's geometry, where should each small map be brightest?",
        "Around its own position: neighbouring patches get similar embeddings, so the model learned 2-D layout "
        "from data.", "03_position_embeddings.py"),
    TourStep(
        "one_head", "One attention head",
        "In every block each head lets the class token gather information from the patches. The map shows where "
        "the class token looks in one head of the last block.",
        "Will every head of a block look at the same place?",
        "No: heads of one block look at different things; move the head slider in Explore to see them all.",
        "04_attention_heads.py"),
    TourStep(
        "query_patch", "Where a patch looks",
        "Every patch is also a query: its own row of attention says which patches it reads from. The outlined "
        "patch is the query.",
        "Will a patch in the middle look mostly at itself and its neighbours, or all over the image?",
        "In early blocks mostly nearby; in late blocks often at the object, wherever it is.",
        "05_query_patch.py"),
    TourStep(
        "attention_distance", "Local and global heads",
        "Mean attention distance measures how far, in pixels, each head looks on average. It is the ViT paper's "
        "way to tell local heads from global ones, block by block.",
        "Which blocks should have the most local heads: the first or the last?",
        "The first blocks mix local and global heads; the last blocks look far, like a convolution's receptive "
        "field that grows with depth.", "06_attention_distance.py"),
    TourStep(
        "rollout", "All blocks at once: rollout",
        "One block's map is not the whole story: information flows through every block and the residual path. "
        "Rollout multiplies the attention of all blocks together.",
        "Will rollout be sharper or blurrier than the last block's class-token map?",
        "Usually blurrier and more spread out: mixing every block smooths the map, and discarding weak links "
        "sharpens it again.", "07_rollout.py"),
    TourStep(
        "class_specific", "Evidence for one class",
        "Attention alone does not say which class it supports. Gradient-weighted attention (Chefer et al. 2021) "
        "keeps only the attention that raised the predicted class's score.",
        "Where does the model look to tell a shirt from a T-shirt or a coat: the sleeves, the collar, the buttons?",
        "On the garment's telling parts when it is right (sleeves and collar separate a shirt from a T-shirt); a "
        "wrong prediction often points somewhere odd. Switch the class to compare the evidence.",
        "11_class_specific.py"),
    TourStep(
        "logit_lens", "The logit lens: when is the answer there?",
        "The logit lens reads every block's class token with the final layer norm and classifier, as if the model "
        "stopped there. It shows at which block the final prediction appears.",
        "Does the first block already know the answer?",
        "Rarely: the early blocks' readouts are unsure or wrong, and the prediction settles in the last blocks.",
        "12_logit_lens.py"),
    TourStep(
        "probes", "Linear probes: what each block knows",
        "A linear probe is a logistic regression trained on one block's features. Its held-out accuracy says how "
        "much class information that block holds, readable by a straight line.",
        "Will a probe on the first block do better or worse than the logit lens there?",
        "Better: the probe is trained for that block, the lens reuses the last block's classifier; lesson 13 "
        "plots both by depth.", "13_linear_probes.py"),
    TourStep(
        "token_norms", "Token norms and outliers",
        "Each token's state has a length (norm). In large ViTs a few background patches grow huge norms and soak "
        "up attention (Darcet et al. 2023).",
        "Will the longest tokens sit on the object?",
        "Not necessarily: outliers sit on plain background patches; the small demo model has none, and the lesson "
        "says so.", "14_token_norms.py"),
    TourStep(
        "feature_pca", "What the patch features encode",
        "Project every patch's features on their first three principal components and show them as red, green and "
        "blue: patches the model describes alike get alike colours.",
        "Will the object's patches share one colour?",
        "In the last block they usually do: the features separate object from background without any labels.",
        "15_feature_pca.py"),
    TourStep(
        "head_ablation", "Switch heads off",
        "Head ablation zeroes one head's output and measures what the model loses (Michel et al. 2019). Many heads "
        "can go without much harm.",
        "Switch off every head of the last block: how much will the top prediction's probability drop?",
        "Look at the before and after columns: some heads matter a lot, many hardly at all.",
        "16_head_ablation.py"),
    TourStep(
        "which_map", "Which map should you trust?",
        "Attention, rollout, gradients and class activation maps each answer \"which patches matter?\" their own way, "
        "and they disagree. Deletion removes the patches a map ranks first and watches the prediction fall; a map "
        "is only as good as it beats random maps.",
        "Will the maps that look most like the object also have the lowest deletion area?",
        "Compare the pictures with the numbers: a map can sit on the object and still score no better than random.",
        "17_which_map_to_trust.py"),
)


def step_index(key: str) -> int:
    """The position of the step called `key` in TOUR. Raises KeyError for an unknown key."""
    for index, step in enumerate(TOUR):
        if step.key == key:
            return index
    raise KeyError(f"no tour step {key!r}: the steps are {', '.join(step.key for step in TOUR)}")
