"""arledger's benchmark harness (`arledger bench`): stages, same-run baselines, machine facts, JSON and README."""
