"""Intent classifiers: each module holds one implementation of the `Classifier` protocol."""
