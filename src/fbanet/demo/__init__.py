"""The no-data demo: synthetic phantoms and a short training run on them."""
