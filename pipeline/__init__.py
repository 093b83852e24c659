"""Reproducible MNIST multilayer-perceptron pipeline: DVC stages tracked in MLflow."""

import os

# TensorFlow's C++ start-up chatter (CPU features, oneDNN) would bury each stage's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
