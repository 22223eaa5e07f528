"""`fastbert verify`: the plain-PyTorch reference encoder (the oracle) and the checks against it and
transformers."""
