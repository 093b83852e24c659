"""The benchmarks' arithmetic: the FLOP count behind "of peak", the split of a stage's wall time."""

from benchmarks.stage_cost import split_wall_time
from benchmarks.training import dense_flops


def test_flops_count_forward_weight_and_input_gradients():
    # 784 -> 2 -> 10: forward 2*(784*2 + 2*10); weight gradients the same again; the input
    # gradient only of the second layer (nothing needs the gradient of the images).
    forward = 2 * (784 * 2 + 2 * 10)
    per_training_image = forward + forward + 2 * (2 * 10)
    assert dense_flops([2], train_images=3, validation_images=5) == 3 * per_training_image + 5 * forward


def test_flops_of_the_benchmarked_network_per_epoch():
    # 512-256-128 on the 49,500 / 10,500 split: 128.5 GFLOP of training, 11.9 of validation.
    assert round(dense_flops([512, 256, 128], 49_500, 10_500) / 1e9, 1) == 140.4


def test_a_stage_fixed_cost_counts_an_epoch_shared_by_replicates_once():
    # Two replicates trained together stamp the same epoch ends; one after another, their own.
    together = [[1000, 3000, 4000, 5000], [1000, 3000, 4000, 5000]]
    one_after_another = [[1000, 3000, 4000, 5000], [7000, 9000, 10000, 11000]]
    assert split_wall_time(20.0, together) == (16.0, 1.0, 4)
    assert split_wall_time(30.0, one_after_another) == (22.0, 1.0, 8)
