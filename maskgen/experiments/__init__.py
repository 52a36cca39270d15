"""Experiments built on the whole tool: the ORL masked-face proof (`make experiment`,
pipelines/orl.toml) and the report that sums an experiment's evaluations up."""
