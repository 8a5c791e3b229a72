"""Training side: Keras models, datasets, cross-validation and reports. Imports edge, never the reverse."""
