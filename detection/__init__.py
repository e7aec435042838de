"""MMDetection glue shared by the stages: detector loading and batched prediction, training
specs and resolved configs, class-head transfer. Imports only ``core``."""
