"""Reproducible MNIST multilayer-perceptron pipeline: DVC stages tracked in MLflow."""
