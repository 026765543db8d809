"""Training curves of stock trl's GRPOTrainer and FastGRPOTrainer side by side, with a statistical parity check."""
