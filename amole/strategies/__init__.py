"""The federated fine-tuning methods (FedAMoLE, its ablations and the baselines) and the registry that names them."""
