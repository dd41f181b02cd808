"""amole: the framework-free core of FedAMoLE (layer, injector, assignment, aggregation, data, training)."""
