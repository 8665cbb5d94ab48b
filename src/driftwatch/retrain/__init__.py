"""Retrain: curated, versioned training sets (dataset.py), LoRA training (trainer.py, torch), runners (runner.py)."""
