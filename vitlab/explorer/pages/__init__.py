"""The explorer's page sections (Streamlit code): streamlit_app.py chooses the mode and calls one of these.

    common.py   the caches shared by every mode, the display options (projector mode) and `show` (a view and its
                PNG download)
    explore.py  free exploration of one image: every view, the live head ablation and logit lens, the .npz export
    tour.py     the guided tour, one vitlab.explorer.tour step per screen
    gallery.py  a grid of test images with one overlay each; a click opens one in Explore
    compare.py  one image through two models, with the difference map
    methods.py  "Which map?": every relevance method on one image with its deletion and insertion areas

Widgets only: the work is the vitlab.explorer package's. The package's __init__ does not import these modules
(the bench and the tests of the non-UI work need no page).
"""
