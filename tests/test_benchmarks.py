"""The training benchmark's FLOP count, on which its "of peak" column rests."""

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
