"""The pipeline: step definitions (declared once), the executor with content-keyed reuse,
parameters, run records, the champion pointer and the workspace lock. The CLI, the Prefect
flows and the generated ``dvc.yaml`` are doors onto it."""
