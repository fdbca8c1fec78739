"""How fast vitlab is, measured against the notebook's way in the same process: `python -m vitlab.bench --quick`.

Every row times the notebook's way (`vitlab.bench.baseline`) and vitlab's way on the same device, with the same batch
size, interleaved (A B B A A B ...) after a warm-up, several repeats, and reports the medians, their ratio and the
target from the performance issue:

    row               baseline: the notebook                        vitlab                              target
    data_pipeline     PIL transforms per image in a DataLoader      BatchTransform on a whole batch     >= 4x
    train_step        fp32, PIL DataLoader, Adam, .item() per step  train_one_epoch, bf16 on CUDA       >= 1x
    capture_overhead  a plain eval forward                          the same forward under capture      <= 1.05x
    eval_throughput   PIL test transform, fp32, .item() per batch   vitlab.training.train.evaluate               report
    peak_memory       its training step, in a fresh process         vitlab's, in a fresh process        report
    demo              (none)                                        finetune --preset demo, end to end  >= 95%, <= 60 s
    epoch (--epoch)   its loop, extrapolated to an epoch            one epoch of CIFAR-100's shape      <= 30 s, >= 10x

Optional rows, run only when named in --rows: `train_step_cpu_bf16` (vitlab's step under CPU bf16 autocast), and
`cached_trunk_step`, `cached_trunk_shapes` and `epoch_cached` (vitlab without against with `--cache-trunk`; see
`bench.cached`).

All data is random uint8 of CIFAR-100's shape and all weights are random: nothing is downloaded, and speed does not
depend on the values. Targets are reported, never asserted: a slow machine is information, not an error.

    python -m vitlab.bench --quick                      # every row, small repeat counts (~3 minutes on 2 cores)
    python -m vitlab.bench --rows data_pipeline,capture_overhead --json bench.json
    python -m vitlab.bench --device cuda --epoch        # on a GPU: also the full-epoch row
"""

from vitlab.bench.cli import BENCHES, build_parser, main
from vitlab.bench.epoch import bench_epoch
from vitlab.bench.machine import cpu_model, describe_device, device_name
from vitlab.bench.measure import (
    NUM_CLASSES,
    OPTIONAL_ROWS,
    ROWS,
    Settings,
    as_dataset,
    check,
    cifar_like,
    count_host_syncs,
    interleaved,
    not_measured,
    row_result,
    sync,
    timed,
)
from vitlab.bench.memory import bench_peak_memory, memory_child
from vitlab.bench.overhead import bench_capture_overhead, capture_samples
from vitlab.bench.report import format_table, report, write_json
from vitlab.bench.rows import bench_data_pipeline, bench_demo, bench_eval_throughput, bench_train_step
from vitlab.bench.sides import input_size, notebook_trainer, vitlab_model

__all__ = [
    "BENCHES", "NUM_CLASSES", "OPTIONAL_ROWS", "ROWS", "Settings", "as_dataset", "bench_capture_overhead",
    "bench_data_pipeline", "bench_demo", "bench_epoch", "bench_eval_throughput", "bench_peak_memory",
    "bench_train_step", "build_parser", "capture_samples", "check", "cifar_like", "count_host_syncs", "cpu_model",
    "describe_device", "device_name", "format_table", "input_size", "interleaved", "main", "memory_child",
    "not_measured", "notebook_trainer", "report", "row_result", "sync", "timed", "vitlab_model", "write_json",
]
