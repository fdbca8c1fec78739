"""How fast vitlab is, against the notebook's way in the same process: `python -m vitlab.bench --quick`.

Each row times the notebook's way (`baseline`, its code kept as the reference) and vitlab's on the same device and
batch size, interleaved (A B B A ...) after a warm-up: the medians, their ratio, the target. Rows with no notebook
counterpart (demo, laptop estimate, explorer, explain) report seconds against a target. Data and weights are random
(nothing is downloaded); targets are reported, never asserted. `cli` holds the registry of rows (ROWS: each row's
function and the flags it reads) and the command, `measure` the kit; the rows live in `rows`, `epoch`, `explorer` and
`explain`. Nothing in vitlab imports this package.

    python -m vitlab.bench --quick                                   # the default rows, small repeat counts
    python -m vitlab.bench --rows data_pipeline,train_step --json bench.json
    python -m vitlab.bench --device cuda --epoch                     # on a GPU: the full-epoch row too
    python -m vitlab.bench --help                                    # every row and flag
"""
