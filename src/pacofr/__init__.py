"""pacofr: PaCo-FR face-representation pretraining with PyTorch Lightning."""

__version__ = "0.1.0"
