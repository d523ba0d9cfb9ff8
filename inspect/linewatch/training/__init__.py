"""Model training (extra `train`: PyTorch CPU). Import submodules directly; nothing here pulls in torch."""
