"""The wiring layer: what a DVC stage does, from validated params to files and an MLflow run, one module per
stage family (pipeline/stage_spec.py declares them). `stages/` only parses a command line and calls here;
`common` maps failures to one line and exit codes."""
