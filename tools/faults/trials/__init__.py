"""One module per fault kind: ``plan_<kind>(rng, quick)`` draws its trials' parameters, ``<kind>(ctx, specs)``
runs them and returns their rows (registered in :mod:`tools.faults.kinds`)."""
